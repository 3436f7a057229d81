from .runner import apply_cli_options, build_runner, enable_amp

__all__ = ['apply_cli_options', 'build_runner', 'enable_amp']
