"""Tunnel health in the lab: the gateways' own probe on a short timer, its metrics in the
lab's CloudWatch (moto), and the alarm rule of core.health evaluated over them.

On AWS a systemd timer runs the probe every 60 s and CloudWatch evaluates the alarms;
here a thread runs the very same probe script every `interval` seconds, and the lab
evaluates the same AlarmRule (core.health) with the period shortened to that interval:
one definition, two consumers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from core import health
from core.facts import PROBE_PATH
from lab import LabError, aws
from lab.build import gateway_run
from lab.lifecycle import Lab
from lab.topology import Site


class ProbeTimer:
    """What wg-site-to-site-probe.timer does on the gateway, every `interval` seconds."""

    def __init__(self, lab: Lab, site: Site, interval: float) -> None:
        self.lab, self.site, self.interval = lab, site, interval
        self.outputs: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProbeTimer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                result = gateway_run(
                    self.site,
                    self.lab.state,
                    [PROBE_PATH],
                    timeout=60,
                    check=False,
                    extra_env={"WG_S2S_STATE_DIR": f"/run/wgs2s-probe-{self.site.name}"},
                )
                self.outputs.append((result.stdout + result.stderr).strip())
            except LabError as error:
                self.outputs.append(str(error))
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))


def samples(
    site: Site, metric: str, since: float, instance_id: str | None = None, peer: str | None = None
) -> list[tuple[float, float]]:
    """What the gateway published; TunnelUp is per instance (the site's, unless named). A
    per-peer metric is `peer`'s (the site's first peer unless named)."""
    dimensions = health.metric_dimensions(
        metric,
        site.facts.stack,
        site.name,
        (peer or site.facts.peers[0].name) if metric in health.PER_PEER_METRICS else None,
        (instance_id or site.gateway.instance_id)
        if metric in health.PER_INSTANCE_METRICS
        else None,
    )
    return aws.metric_samples(
        site.facts.site.aws_region, health.NAMESPACE, metric, dimensions, since
    )


def alarm_state(
    rule: health.AlarmRule, points: Sequence[tuple[float, float]], interval: float, now: float
) -> str:
    """The state CloudWatch would give `rule`, with its period shortened to `interval`."""
    periods = health.aggregate(rule, points, now, rule.evaluation_range, interval)
    return health.evaluate(rule, periods)


def notifications(
    rule: health.AlarmRule,
    points: Sequence[tuple[float, float]],
    interval: float,
    created: float,
    now: float,
) -> list[health.Notification]:
    """What the alarm's topic got since the alarm was created at `created`: CloudWatch's
    evaluation at the end of every (shortened) period, from INSUFFICIENT_DATA."""
    periods = max(1, int((now - created) // interval))
    values = health.aggregate(rule, points, created + periods * interval, periods, interval)
    return health.notifications(rule, values)
