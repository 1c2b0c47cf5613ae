"""The collector contract helpers: declaration checks, options, series, column builder."""
import numpy as np
import pytest

from ingress.collect import COLLECTORS
from ingress.collect.base import (COUNTER, Collector, CollectorSettings, ColumnBuilder, MetricSpec,
                                  OptionSpec)
from ingress.errors import ConfigError


def test_metric_names_must_start_with_collector_name():
    with pytest.raises(TypeError, match="must be dotted lower case and start with 'foo.'"):
        class Bad(Collector):
            name = "foo"
            metrics = (MetricSpec("bar.x", "1", "x"),)


def test_metric_declared_twice_is_refused():
    with pytest.raises(TypeError, match="declared twice"):
        class Bad(Collector):
            name = "foo"
            metrics = (MetricSpec("foo.x", "1", "x"), MetricSpec("foo.x", "1", "y"))


class Toy(Collector):
    name = "toy"
    metrics = (MetricSpec("toy.a", "1", "a", COUNTER, ("dev",)),)
    options = (OptionSpec("depth", 3, "how deep"),)


def test_unknown_option_names_the_key():
    with pytest.raises(ConfigError, match="'toy'.*unknown option.*'dpeth'.*known: depth"):
        Toy(CollectorSettings(options={"dpeth": 4}))
    assert Toy(CollectorSettings(options={"depth": 4})).opts == {"depth": 4}
    assert Toy().opts == {"depth": 3}


def test_series_checks_declared_tags_and_interns_once():
    t = Toy()
    a = t.series("toy.a", dev="sda")
    assert t.series("toy.a", dev="sda") == a
    assert t.table.kinds[a] == COUNTER
    with pytest.raises(KeyError, match="takes tags"):
        t.series("toy.a")
    with pytest.raises(KeyError, match="not declared"):
        t.series("toy.b", dev="x")


def test_column_builder_grows_drops_nan_and_hands_out_copies():
    b = ColumnBuilder(2)
    b.put(np.array([1, 2, 3], np.uint32), np.array([1.0, np.nan, 3.0]))
    b.put1(7, 7.0)
    cols = b.finish(5)
    assert cols.local_ids.tolist() == [1, 3, 7] and cols.values.tolist() == [1.0, 3.0, 7.0]
    b.reset()
    b.put(np.array([9], np.uint32), np.array([9.0]))
    cols2 = b.finish(6)
    assert cols.local_ids.tolist() == [1, 3, 7]  # the first pass is untouched by reuse
    assert cols2.local_ids.tolist() == [9] and cols2.ts == 6


def test_registry_priorities_and_names():
    want = {"processes": 0, "connections": 1, "disk": 2, "network": 2, "memory": 3, "health": 4, "cpu": 4,
            "agent": 4}
    for name, cls in COLLECTORS.items():
        assert cls.name == name
        assert cls.priority == want[name]
        assert cls.metrics
