"""Scene input/output: scene folders, camera conventions, images, run folders."""
