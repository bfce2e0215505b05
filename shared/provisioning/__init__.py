"""Provisioning: declaring sources and spanner configs in a YAML file (`axiom config apply` / `config show`)."""

from shared.provisioning.apply import ApplyReport, Change, apply_config_yaml
from shared.provisioning.export import export_config
from shared.provisioning.self_loop import is_local_host, own_scp_refusal, points_at_own_scp
from shared.provisioning.yaml_source import ConfigError

__all__ = [
    "ApplyReport",
    "Change",
    "ConfigError",
    "apply_config_yaml",
    "export_config",
    "is_local_host",
    "own_scp_refusal",
    "points_at_own_scp",
]
