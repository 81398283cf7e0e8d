"""Targets of forwarding rules: one module per kind of system, one `Sink` interface."""

from __future__ import annotations

from iotgate.forward.sinks.base import DeliveryError, Sink, delivery_id, metadata
from iotgate.forward.targets import AmqpTarget, MqttTarget, NatsTarget, RedisTarget, TargetSpec, WebhookTarget

__all__ = ["DeliveryError", "Sink", "delivery_id", "make_sink", "metadata"]


def make_sink(spec: TargetSpec, target_id: int, rule_id: int, concurrency: int) -> Sink:
    """The sink for a target spec; the client library is imported only when a target uses it."""
    if isinstance(spec, WebhookTarget):
        from iotgate.forward.sinks.webhook import WebhookSink

        return WebhookSink(spec, target_id, rule_id, concurrency)
    if isinstance(spec, MqttTarget):
        from iotgate.forward.sinks.mqtt import MqttSink

        return MqttSink(spec, target_id, rule_id, concurrency)
    if isinstance(spec, NatsTarget):
        from iotgate.forward.sinks.nats_js import NatsSink

        return NatsSink(spec, target_id, rule_id, concurrency)
    if isinstance(spec, AmqpTarget):
        from iotgate.forward.sinks.amqp import AmqpSink

        return AmqpSink(spec, target_id, rule_id, concurrency)
    if isinstance(spec, RedisTarget):
        from iotgate.forward.sinks.redis_streams import RedisSink

        return RedisSink(spec, target_id, rule_id, concurrency)
    raise TypeError(f"no sink for {type(spec).__name__}")
