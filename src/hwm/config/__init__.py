"""What hwm reads of a command line and its config files before jsonargparse parses them (``prescan``):
the bottom layer, shared by the CLI and ``hwm study``."""
