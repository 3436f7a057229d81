"""Paper plugins. Each ``projects/<Paper>/<package>`` registers into vistok's
registries when a config imports it through ``custom_imports``."""
