"""Configuration: the typed sections (:mod:`.schema`) and the YAML loader (:mod:`.loading`)."""

from .loading import (
    PACKAGED_CONFIGS,
    PATH_KEYS,
    apply_overrides,
    deep_merge,
    dump_config,
    format_validation_error,
    load_config,
    load_raw,
    packaged_config_path,
    parse_override,
    resolve_config_path,
    validate_config,
)
from .schema import (
    ALL_GROUPS,
    Config,
    DataConfig,
    DataSplit,
    EarlyStopConfig,
    EMAConfig,
    FusionConfig,
    GateConfig,
    GroupName,
    ModelConfig,
    PhaseConfig,
    TrainAugmentConfig,
    TrainConfig,
)

__all__ = [
    "ALL_GROUPS", "PACKAGED_CONFIGS", "PATH_KEYS", "Config", "DataConfig", "DataSplit", "EMAConfig",
    "EarlyStopConfig", "FusionConfig", "GateConfig", "GroupName", "ModelConfig", "PhaseConfig",
    "TrainAugmentConfig", "TrainConfig", "apply_overrides", "deep_merge", "dump_config", "format_validation_error",
    "load_config", "load_raw", "packaged_config_path", "parse_override", "resolve_config_path", "validate_config",
]
