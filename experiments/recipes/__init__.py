"""Recipes: YAML files of a dataset's training settings (applied by ``--dataset``), installed as
``pyro_ncl.recipe_files``."""
