import json
import math

import pytest

from spqrkit.config import CONFIG_VERSION, PRESETS, ConfigError, QuantConfig, get_preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json(name):
    cfg = PRESETS[name]
    text = cfg.to_json()
    json.loads(text)  # strict JSON: no bare Infinity
    assert "Infinity" not in text
    assert QuantConfig.from_json(text) == cfg


def test_overrides_apply_including_none():
    cfg = get_preset("spqr-w3", beta1=32, outlier_threshold=0.1)
    assert (cfg.beta1, cfg.outlier_threshold, cfg.wbits) == (32, 0.1, 3)
    cfg = get_preset("spqr-w3", beta2=None, scale_bits=None, zero_bits=None)
    assert not cfg.quantized_stats
    assert math.isinf(get_preset("gptq-w4").outlier_threshold)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(wbits=1), "wbits"),
        (dict(wbits=9), "wbits"),
        (dict(beta1=0), "beta1"),
        (dict(beta2=None), "second-level"),
        (dict(outlier_threshold=0.0), "outlier_threshold"),
        (dict(percdamp=-1.0), "percdamp"),
        (dict(algorithm="rtn"), "act_order"),
        (dict(algorithm="awq"), "algorithm"),
        (dict(round_zero=True), "round_zero"),
        (dict(version=CONFIG_VERSION + 1), "version"),
    ],
)
def test_invalid_configs_are_refused(overrides, match):
    with pytest.raises(ConfigError, match=match):
        get_preset("spqr-w3", **overrides)


def test_unknown_preset_and_fields():
    with pytest.raises(ConfigError, match="unknown preset"):
        get_preset("spqr-w5")
    with pytest.raises(ConfigError, match="unknown config fields"):
        get_preset("spqr-w3", beta3=4)
    with pytest.raises(ConfigError, match="unknown config fields"):
        QuantConfig.from_dict({"wbits": 3, "bogus": 1})
