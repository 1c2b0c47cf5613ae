"""The Kafka output (confluent-kafka / librdkafka).

One message per batch (format ``batch``); format ``json`` writes one message
per sample (``json_messages = "sample"``, the default) or one message per batch
holding every sample as newline-delimited JSON (``json_messages = "batch"``)::

    topic   = the configured topic, "{tenant}" replaced by the tenant id
    key     = tenant id (all of a tenant's messages land on one partition, in order)
    headers = tenant-id:    tenant id
              batch-id:     32 lowercase hex characters
              schema:       ingress-batch/1 | ingress-json/1
              host:         the agent's host name
              sample-count: samples in this message (the batch's count; 1 for json per sample)
              content-type: application/x-ndjson (json per batch only)
    value   = the encoded batch | one JSON object | NDJSON lines (see ingress.outputs.jsonfmt)

The producer is idempotent with ``acks=all`` (neither can be turned off through
``options``). A batch counts as delivered only when librdkafka's delivery
report says so for every message of it; until then it stays in the spool.

Memory bound: librdkafka's own queue defaults to 1 GiB / 100 000 messages,
enough for a burst after an outage to take the agent far past its memory cap.
``memory_budget_mb`` sets ``queue.buffering.max.kbytes`` (half the budget),
``queue.buffering.max.messages`` and ``message.max.bytes`` (an eighth, at
least 64 KiB and at most 16 MiB); a produce past the bound fails at once with
a retryable "local queue full" and the batch waits in the spool instead.
Explicit ``options`` win over these computed values.

Errors in delivery reports are retryable except those no retry can fix
(message too large, invalid record or topic, topic authorization): those make
the batch a dead letter.

Producer replacement: a fatal producer error, or a message that timed out
(``message.timeout.ms``, 30 s here instead of librdkafka's 5 minutes), fails
the batches the producer still holds as retryable and replaces it with a new
one, which gets a new producer id.

Reporting: librdkafka's own log lines go through :class:`_LibLog`, at most one
line per (facility, level) a minute, the next one saying how many were
suppressed. Brokers that cannot be reached (``_ALL_BROKERS_DOWN``; the connect
timeout is 8 s here, so even a silent address is known within 10 s of start)
are reported once at warning, and once more when a delivery report shows them
reachable again. This is what recovers from a broker that
lost its idempotence state (a restarted in-memory broker answers "unknown
producer id" forever, and librdkafka would keep bumping the epoch of the old
id); during a plain outage the new producer simply waits like the old one.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from types import MappingProxyType
from typing import Any, Callable, Mapping

from ingress import names
from ingress.errors import ConfigError, PermanentError, RetryableError, TransportError, WireError
from ingress.logs import get_logger, register_secret
from ingress.options import REQUIRED, Brokers, Enum, Option, Scalars, Str
from ingress.outputs.base import Done, OutgoingBatch, Output
from ingress.outputs.jsonfmt import FORMATS, SCHEMA_BATCH, SCHEMA_JSON, sample_lines
from ingress.outputs.plugin import OutputPlugin

log = get_logger("ingress.outputs.kafka")

# Keys ingress sets itself; options may not change them.
_FIXED = {"enable.idempotence": (("true", True, 1), "ingress producers are always idempotent"),
          "acks": (("all", "-1", -1), "ingress producers always use acks=all")}
_RESERVED = ("bootstrap.servers", "on_delivery", "error_cb", "logger")


def topic_problem(topic: str) -> str | None:
    """Why ``topic`` (``{tenant}`` expanding to a tenant id) is not a Kafka topic, or None.

    The one rule, used by the configuration check and by :class:`KafkaOutput`.
    """
    if not names.fullmatch(names.KAFKA_TOPIC_RE, topic.replace("{tenant}", "x")):
        return (f"{topic!r} is not a valid Kafka topic "
                "(letters, digits, '.', '_', '-'; '{tenant}' expands)")
    return None


def option_problem(key: str, value: Any) -> str | None:
    """Why the librdkafka setting ``key = value`` may not be given in ``options``, or None."""
    if key in _RESERVED:
        return "set by ingress; cannot be given in options"
    if key in _FIXED and value not in _FIXED[key][0]:
        return _FIXED[key][1]
    return None


class _LibLog:
    """librdkafka's log lines, demoted and rate-limited: a refused connection during
    an outage is expected (the output reports the outage once, the delivery loop its
    counters), and librdkafka repeats such lines at every reconnect attempt.

    At most one line per (facility, level) per ``interval_s``; the next one that
    gets through ends with how many were suppressed.
    """

    def __init__(self, logger: logging.Logger, interval_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from ingress.logs import RateLimiter

        self.logger = logger
        self.interval_s = interval_s
        self.limiter = RateLimiter(clock)

    def log(self, level: int, fmt: str, *args: Any) -> None:
        fac = args[0] if args else ""
        if fac in ("FAIL", "BROKERFAIL", "CONNECT", "ERROR"):
            level = min(level, logging.INFO)
        level = min(level, logging.WARNING)
        if not self.logger.isEnabledFor(level):
            return
        n = self.limiter.allow((str(fac), level), self.interval_s)
        if n is None:
            return
        if n:
            fmt, args = fmt + " (%d similar lines suppressed)", args + (n,)
        self.logger.log(level, fmt, *args)


_liblog = _LibLog(logging.getLogger(log.name))  # librdkafka calls a stdlib logger (printf style)


def _kafka():
    import confluent_kafka

    return confluent_kafka


def budget_options(memory_budget_mb: float) -> dict[str, int]:
    """The librdkafka queue bounds derived from a memory budget (MiB)."""
    budget = int(memory_budget_mb * (1 << 20))
    if budget < (1 << 20):
        raise ConfigError(f"memory_budget_mb: {memory_budget_mb!r} must be at least 1")
    return {
        "queue.buffering.max.kbytes": max(512, budget // 2 // 1024),
        "queue.buffering.max.messages": max(1000, budget // 512),
        "message.max.bytes": max(64 << 10, min(budget // 8, 16 << 20)),
    }


# Delivery errors no retry can fix (docs/outputs.md lists the same names).
PERMANENT_ERRORS = ("MSG_SIZE_TOO_LARGE", "INVALID_RECORD", "INVALID_MSG", "TOPIC_EXCEPTION",
                    "RECORD_LIST_TOO_LARGE", "TOPIC_AUTHORIZATION_FAILED", "INVALID_REQUIRED_ACKS",
                    "_INVALID_ARG", "_INVALID_TYPE")


def _permanent_codes() -> set[int]:
    E = _kafka().KafkaError
    return {getattr(E, n) for n in PERMANENT_ERRORS}


def classify(err: Any) -> TransportError:
    """A librdkafka ``KafkaError`` as a retryable or permanent error."""
    msg = f"kafka: {err.name()}: {err.str()}"
    if not err.fatal() and err.code() in _permanent_codes():
        return PermanentError(msg)
    return RetryableError(msg)


class _Tracker:
    """Completes one batch once every message of it has its delivery report."""

    __slots__ = ("owner", "batch", "done", "lock", "pending", "sealed", "error", "finished")

    def __init__(self, owner: "KafkaOutput", batch: OutgoingBatch, done: Done) -> None:
        self.owner = owner
        self.batch = batch
        self.done = done
        self.lock = threading.Lock()
        self.pending = 0
        self.sealed = False  # every message is produced (or producing stopped)
        self.error: BaseException | None = None
        self.finished = False

    def report(self, err: Any, msg: Any) -> None:
        if err is not None and err.code() == _kafka().KafkaError._MSG_TIMED_OUT:
            self.owner._stale = f"{err.name()}: {err.str()}"
        elif err is None and self.owner.unreachable is not None:
            self.owner._reachable()
        with self.lock:
            self.pending -= 1
            if err is not None and self.error is None:
                self.error = classify(err)
            fire = self._ready()
        if fire:
            self.done(self.batch, self.error)

    def seal(self, error: BaseException | None = None) -> None:
        with self.lock:
            if error is not None and self.error is None:
                self.error = error
            self.sealed = True
            fire = self._ready()
        if fire:
            self.done(self.batch, self.error)

    def _ready(self) -> bool:
        if self.sealed and self.pending == 0 and not self.finished:
            self.finished = True
            return True
        return False


class KafkaOutput(Output):
    """Produce batches to Kafka.

    Parameters
    ----------
    name
        The output's name.
    brokers
        ``bootstrap.servers``: ``host:port[,host:port...]``.
    topic
        Topic name; ``{tenant}`` expands to the tenant id.
    tenants
        Tenants this output serves; ``None`` for every tenant.
    format
        ``"batch"`` (the encoded batch) or ``"json"`` (JSON lines, schema ``ingress-json/1``).
    json_messages
        For format ``json``: ``"sample"`` (one message per sample, the default) or
        ``"batch"`` (one message per batch, its samples as newline-delimited JSON).
    options
        librdkafka configuration passed through (TLS ``ssl.*``, SASL ``sasl.*``,
        ``security.protocol``, ``linger.ms``, ...). Unknown keys are a
        :class:`ConfigError` at :meth:`start` naming the key.
    memory_budget_mb
        Bound of librdkafka's own buffers (see the module docstring).
    host
        Unused unless a batch carries no host; kept for symmetry with other outputs.
    producer_factory
        Builds the producer from a config dict (tests); ``confluent_kafka.Producer`` by default.
    """

    type = "kafka"
    needs_credential = False

    def __init__(
        self,
        name: str,
        brokers: str,
        topic: str,
        tenants: frozenset[str] | None = None,
        *,
        format: str = "batch",
        json_messages: str = "sample",
        options: Mapping[str, Any] | None = None,
        memory_budget_mb: float = 32,
        producer_factory: Callable[[dict], Any] | None = None,
    ) -> None:
        super().__init__(name, tenants)
        if format not in FORMATS:
            raise ConfigError(f"outputs.{name}.format: {format!r} is not one of {', '.join(FORMATS)}")
        if json_messages not in ("sample", "batch"):
            raise ConfigError(f"outputs.{name}.json_messages: {json_messages!r} is not \"sample\" or \"batch\"")
        if not brokers:
            raise ConfigError(f"outputs.{name}.brokers: must name at least one host:port")
        problem = topic_problem(topic)
        if problem:
            raise ConfigError(f"outputs.{name}.topic: {problem}")
        self.brokers = brokers
        self.topic = topic
        self.format = format
        self.json_messages = json_messages
        self.schema = SCHEMA_JSON if format == "json" else SCHEMA_BATCH
        self.options = dict(options or {})
        for k, v in self.options.items():
            problem = option_problem(k, v)
            if problem:
                raise ConfigError(f"outputs.{name}.options.{k}: {problem}")
        self.memory_budget_mb = memory_budget_mb
        self._budget = budget_options(memory_budget_mb)
        self.queue_cap: int | None = None  # lowered by limit_queue()
        self.queue_capped = 0
        self._factory = producer_factory
        self._producer: Any = None
        self._lock = threading.Lock()
        self._fatal: str | None = None
        self._stale: str | None = None
        self.replacements = 0
        self.last_error: str | None = None
        self.unreachable: str | None = None  # why, while the brokers cannot be reached
        self._unreachable_lock = threading.Lock()

    # -- configuration ----------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The complete librdkafka configuration the producer is built with."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.brokers,
            "enable.idempotence": True,
            "acks": "all",
            "client.id": f"ingress-{self.name}",
            "compression.type": "lz4" if self.format == "json" else "none",
            # librdkafka's 300 s default keeps a stuck batch out of the spool's
            # retry (and the producer-replacing watchdog) for five minutes.
            "message.timeout.ms": 30000,
            # librdkafka waits 30 s for a connect to a silent address; 8 s lets the
            # outage be reported within 10 s of start (options may set it).
            "socket.connection.setup.timeout.ms": 8000,
        }
        conf.update(self._budget)
        conf.update(self.options)
        conf["enable.idempotence"] = True
        conf["acks"] = "all"
        conf["error_cb"] = self._on_error
        conf["logger"] = _liblog
        return conf

    def _build(self) -> Any:
        factory = self._factory or _kafka().Producer
        try:
            return factory(self.config())
        except _kafka().KafkaException as e:
            raise self._config_error(e) from None

    def _config_error(self, e: Exception) -> ConfigError:
        kerr = e.args[0] if e.args else e
        text = kerr.str() if hasattr(kerr, "str") else str(kerr)
        m = re.search(r'property "([^"]+)"', text)
        key = m.group(1) if m else None
        if key not in self.options:
            # librdkafka names the canonical property; find which option of ours it was.
            for k, v in self.options.items():
                try:
                    _kafka().Producer({k: v, "logger": _liblog})
                except _kafka().KafkaException:
                    key = k
                    break
                except Exception:  # noqa: BLE001
                    continue
        where = f"outputs.{self.name}.options" + (f".{key}" if key else "")
        err = ConfigError(f"{where}: {text}")
        err.option_key, err.detail = key, text  # for check-config's FILE:LINE line
        return err

    def start(self) -> None:
        """Build the producer; an unknown or invalid librdkafka option is a ConfigError naming it."""
        with self._lock:
            if self._producer is None:
                self._producer = self._build()

    def probe(self, timeout: float = 5.0) -> None:
        """Raise RetryableError unless the brokers answer a metadata request within ``timeout``."""
        self.start()
        try:
            self._producer.list_topics(timeout=timeout)
        except _kafka().KafkaException as e:
            raise RetryableError(f"kafka output {self.name}: brokers {self.brokers} unreachable: "
                                 f"{e.args[0].str() if e.args else e}") from None

    def connect_probe(self, timeout: float = 5.0) -> None:
        """``check-config --connect``: the brokers answer a metadata request (``list_topics``)."""
        self.probe(timeout)

    def _on_error(self, err: Any) -> None:
        self.last_error = f"{err.name()}: {err.str()}"
        if err.code() == _kafka().KafkaError._ALL_BROKERS_DOWN:
            with self._unreachable_lock:
                first = self.unreachable is None
                self.unreachable = self.last_error
            if first:
                log.warning(f"kafka output {self.name}: brokers {self.brokers} unreachable ({err.str()}); "
                            "batches stay in the spool until they answer", output=self.name)
            return
        if err.fatal():
            self._fatal = self.last_error
            log.error(f"kafka output {self.name}: fatal producer error, the producer will be replaced: "
                      f"{self.last_error}", output=self.name)
        else:
            log.debug(f"kafka output {self.name}: {self.last_error}", output=self.name)

    def _reachable(self) -> None:
        with self._unreachable_lock:
            was, self.unreachable = self.unreachable, None
        if was is not None:
            log.warning(f"kafka output {self.name}: brokers {self.brokers} reachable again", output=self.name)

    def limit_queue(self, fraction: float | None) -> None:
        """Hold librdkafka's local queue at ``fraction`` of its message bound (None: lift).

        librdkafka's own bounds are fixed when the producer is built; this lower
        one is checked before each produce, so a batch past it stays in the spool.
        """
        if fraction is None:
            self.queue_cap = None
        else:
            self.queue_cap = max(1, int(self._budget["queue.buffering.max.messages"] * fraction))

    def topic_for(self, tenant: str) -> str:
        return self.topic.replace("{tenant}", tenant)

    # -- the output contract ----------------------------------------------------
    def submit(self, batch: OutgoingBatch, done: Done) -> None:
        if self._producer is None:
            self.start()
        producer = self._producer
        extra: list[tuple[str, bytes]] = []
        if self.format == "json":
            try:
                lines = sample_lines(batch.payload)
            except WireError as e:
                done(batch, PermanentError(f"batch {batch.batch_id.hex()} cannot be decoded for json: {e}"))
                return
            if self.json_messages == "batch":
                values = [b"".join(line + b"\n" for line in lines)] if lines else []
                count = str(len(lines)).encode()
                extra.append(("content-type", b"application/x-ndjson"))
            else:
                values = lines
                count = b"1"
        else:
            values = [batch.payload]
            count = str(batch.sample_count).encode()
        headers = [
            ("tenant-id", batch.tenant.encode()),
            ("batch-id", batch.batch_id.hex().encode()),
            ("schema", self.schema.encode()),
            ("host", batch.host.encode()),
            ("sample-count", count),
        ] + extra
        topic = self.topic_for(batch.tenant)
        key = batch.tenant.encode()
        tracker = _Tracker(self, batch, done)
        error: BaseException | None = None
        cap = self.queue_cap
        if cap is not None and len(producer) >= cap:
            # The memory guard lowered the local queue: the batch waits in the spool.
            self.queue_capped += 1
            done(batch, RetryableError(f"kafka output {self.name}: local queue held at {cap} messages "
                                       f"while the agent's memory is near its cap; batch kept in the spool"))
            return
        for v in values:
            with tracker.lock:
                tracker.pending += 1
            try:
                producer.produce(topic, value=v, key=key, headers=headers, on_delivery=tracker.report)
            except BufferError:
                with tracker.lock:
                    tracker.pending -= 1
                error = RetryableError(
                    f"kafka output {self.name}: local queue full (memory_budget_mb={self.memory_budget_mb:g}); "
                    f"batch kept in the spool")
                break
            except _kafka().KafkaException as e:
                with tracker.lock:
                    tracker.pending -= 1
                error = classify(e.args[0])
                break
            except Exception as e:  # noqa: BLE001 - e.g. a closed producer
                with tracker.lock:
                    tracker.pending -= 1
                error = RetryableError(f"kafka output {self.name}: {type(e).__name__}: {e}")
                break
        tracker.seal(error)

    def poll(self, timeout: float = 0.0) -> None:
        p = self._producer
        if p is None:
            return
        p.poll(timeout)
        if self._fatal or self._stale:
            self._replace()

    def _replace(self) -> None:
        with self._lock:
            old, reason = self._producer, self._fatal or self._stale
            self._fatal = self._stale = None
            self._producer = self._build()
            self.replacements += 1
        # Fail what the dead producer still holds; the spool sends it again.
        try:
            old.purge()
        except Exception:  # noqa: BLE001
            pass
        old.flush(1.0)
        log.warning(f"kafka output {self.name}: producer replaced after fatal error: {reason}", output=self.name)

    def flush(self, timeout: float) -> int:
        p = self._producer
        if p is None:
            return 0
        return p.flush(timeout)

    def in_queue(self) -> int:
        """Messages librdkafka holds (queued or awaiting a delivery report)."""
        p = self._producer
        return len(p) if p is not None else 0

    def close(self) -> None:
        with self._lock:
            p, self._producer = self._producer, None
        if p is None:
            return
        # Unacknowledged messages are dropped here; their batches are still in the spool.
        try:
            p.purge()
        except Exception:  # noqa: BLE001
            pass
        p.flush(0.5)


# --------------------------------------------------------------------------- plugin declaration

# librdkafka settings that hold a secret: registered (never logged) even when written in the TOML.
_SECRET_OPTION = re.compile(r"(?i).*(password|secret|ssl\.key\.pem).*")


def _check(at, path: tuple, o: dict, agent) -> None:
    from ingress.secretref import SecretRef, resolve

    problem = topic_problem(o["topic"])
    if problem:
        raise at.error(path + ("topic",), problem)
    options = dict(o["options"])
    for k, v in options.items():
        label = f"outputs.{o['name']}.options.{k}"
        if isinstance(v, SecretRef):  # read now: start-up, check-config and every reload
            try:
                options[k] = v = resolve(v, label)
            except ValueError as e:
                raise at.error(path + ("options", k), str(e)) from None
            v = v.value
        elif isinstance(v, str) and _SECRET_OPTION.fullmatch(k):
            register_secret(v, label)
        problem = option_problem(k, v)
        if problem:
            raise at.error(path + ("options", k), problem)
    o["options"] = MappingProxyType(options)


def _validate(o, where) -> None:
    """librdkafka checks every option (a misspelled key, a bad value): a producer is built with
    the output's configuration and dropped at once (no error callback: nothing is reported)."""
    out = _build(o, None)
    conf = out.config()
    conf.pop("error_cb", None)
    try:
        p = _kafka().Producer(conf)
    except _kafka().KafkaException as e:
        err = out._config_error(e)
        key = err.option_key
        raise ConfigError(f"{where(('options', key) if key else ('options',))}: {err.detail}") from None
    del p


def _build(o, ctx):
    from ingress.secretref import plain

    return KafkaOutput(o.name, o.brokers, o.topic, None if o.tenants is None else frozenset(o.tenants),
                       format=o.format, options={k: plain(v) for k, v in o.options.items()},
                       json_messages=o.json_messages)


PLUGIN = OutputPlugin(
    type="kafka",
    options=(
        Option("outputs", "brokers", Brokers(), REQUIRED, "Bootstrap brokers."),
        Option("outputs", "topic", Str(), "ingress.metrics", "Topic; `{tenant}` in it expands to the tenant id."),
        Option("outputs", "options", Scalars(), {},
               "Passed to the client as is (librdkafka settings). `enable.idempotence` and "
               "`acks` are fixed by ingress."),
        Option("outputs", "json_messages", Enum("sample", "batch"), "sample",
               "Format `json` only: one message per sample (`\"sample\"`), or one message per batch "
               "holding its samples as newline-delimited JSON (`\"batch\"`)."),
    ),
    check=_check, build=_build, validate=_validate,
    destinations=lambda o: [("brokers", b.strip()) for b in o.brokers.split(",") if b.strip()])
