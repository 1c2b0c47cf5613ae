"""Outputs: where batches go. One module per output type, registered in ``OUTPUTS``.

Each output module declares, next to its code, an
:class:`~ingress.outputs.plugin.OutputPlugin` named ``PLUGIN``: the keys of
``[[outputs]]`` its type takes, its checks across them, and how the output is
built from them. Adding an output is that module plus one registration line
below (docs/contributing-plugins.md). ``OUTPUTS`` imports a module the first
time its type is looked up, so a configuration without Kafka never imports the
Kafka module, and the Kafka client library is imported only when the output
starts.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ingress.plugins import Registry

if TYPE_CHECKING:
    from ingress.outputs.plugin import OutputPlugin

OUTPUTS: Registry[OutputPlugin] = Registry("output")
OUTPUTS.register("kafka", "ingress.outputs.kafka:PLUGIN")
OUTPUTS.register("http", "ingress.outputs.http:PLUGIN")
OUTPUTS.register("file", "ingress.outputs.file:PLUGIN")
OUTPUTS.register("otlp", "ingress.outputs.otlp:PLUGIN")
OUTPUTS.register("remote_write", "ingress.outputs.remote_write:PLUGIN")

__all__ = ["OUTPUTS"]
