"""Configs validate types and ranges, name the bad field, and round-trip through JSON."""
import doctest
import json
import math

import pytest

from training.ml import config as config_module
from training.ml.config import ConfigError, RewardConfig, config_from_dict


def test_doctests():
    assert doctest.testmod(config_module).failed == 0


def test_round_trip_through_json():
    original = RewardConfig(base_model="models/tiny", lora_r=8, lora_target_modules=["q_proj"], margin_coef=0.5)
    again = RewardConfig.from_dict(json.loads(json.dumps(original.to_dict())))
    assert again == original


def test_ints_are_accepted_for_floats():
    assert RewardConfig.from_dict({"base_model": "m", "epochs": 2}).epochs == 2.0


@pytest.mark.parametrize(
    "changes, field, words",
    [
        ({"epochs": "1"}, "epochs", "must be float"),
        ({"seed": True}, "seed", "must be int"),
        ({"use_ranking_weights": 1}, "use_ranking_weights", "must be bool"),
        ({"batch_size": 0}, "batch_size", "must be >= 1"),
        ({"eval_fraction": 0.95}, "eval_fraction", "must be <= 0.9"),
        ({"learning_rate": math.nan}, "learning_rate", "finite"),
        ({"lr_scheduler": "step"}, "lr_scheduler", "must be one of"),
        ({"lora_target_modules": ["q_proj", 3]}, "lora_target_modules[1]", "must be str"),
        ({"lora_target_modules": "q_proj"}, "lora_target_modules", "must be a list"),
        ({"learnin_rate": 1e-4}, "learnin_rate", "unknown setting"),
        ({"base_model": "  "}, "base_model", "is required"),
    ],
)
def test_bad_values_are_rejected_naming_the_field(changes, field, words):
    with pytest.raises(ConfigError) as caught:
        RewardConfig.from_dict({"base_model": "m", **changes})
    assert caught.value.field == field
    assert words in str(caught.value) and str(caught.value).startswith(field)


def test_validate_catches_values_set_in_code():
    config = RewardConfig(base_model="m", keep_checkpoints=0)
    with pytest.raises(ConfigError, match="keep_checkpoints"):
        config.validate()


def test_config_from_dict_by_kind():
    assert isinstance(config_from_dict("reward", {"base_model": "m"}), RewardConfig)
    with pytest.raises(ConfigError, match="no config for run kind 'nope'"):
        config_from_dict("nope", {})
    with pytest.raises(ConfigError, match="must be an object"):
        config_from_dict("reward", ["base_model"])
