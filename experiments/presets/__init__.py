"""Presets: YAML files of a method's settings (``--preset NAME``), installed as ``pyro_ncl.preset_files``."""
