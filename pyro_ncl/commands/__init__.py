"""The command lines of the scripts in experiments/ (each a thin front: ``from pyro_ncl.commands.X import …``),
kept in the library so that they are tested in process and run from an installed copy
(``python -m pyro_ncl.commands.X``)."""
