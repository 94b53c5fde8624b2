"""`wg-site-to-site:alerts` (optional): where the tunnel alarms notify.

A small model for config.py to take in as `alerts: AlertsConfig | None = None`, and
its cross checks (`alerts_problems`) for config.py's `_cross_checks`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated

from pydantic import AfterValidator, Field, model_validator

from core.config import PROJECT, _matches, _Model

# Good enough to catch a typo or a pasted name; SNS itself confirms the address.
EMAIL = re.compile(r"^[^@\s,;<>]+@[^@\s,;<>]+\.[A-Za-z]{2,}$")
SNS_TOPIC_ARN = re.compile(r"^arn:aws[a-z-]*:sns:([a-z0-9-]+):(\d{12}):([A-Za-z0-9_-]{1,256})$")


def topic_region(arn: str) -> str:
    match = SNS_TOPIC_ARN.fullmatch(arn)
    if match is None:
        raise ValueError(f"{arn!r} is not an SNS topic ARN")
    return match[1]


def _unique(addresses: list[str]) -> list[str]:
    seen = {address.lower() for address in addresses}
    if len(seen) != len(addresses):
        raise ValueError("lists an address twice")
    return addresses


class AlertsConfig(_Model):
    """`wg-site-to-site:alerts`: e-mail addresses to subscribe and/or an existing topic."""

    emails: Annotated[
        list[Annotated[str, _matches(EMAIL, "an e-mail address")]],
        AfterValidator(_unique),
        Field(max_length=20),
    ] = []  # noqa: RUF012 - pydantic copies defaults per instance
    topic_arn: Annotated[str, _matches(SNS_TOPIC_ARN, "an SNS topic ARN")] | None = None

    @model_validator(mode="after")
    def _somewhere_to_send(self) -> AlertsConfig:
        if not self.emails and self.topic_arn is None:
            raise ValueError("needs emails, topicArn or both")
        return self


def alerts_problems(
    alerts: AlertsConfig | None,
    site_regions: Sequence[str],
    persistent_keepalive: int | None,
) -> list[str]:
    """Cross checks of `alerts` against the rest of the stack config, one line each."""
    from core.health import keepalive_problems  # core.health imports config, which imports us

    problems = keepalive_problems(alerts is not None, persistent_keepalive)
    if alerts is not None and alerts.topic_arn is not None:
        region = topic_region(alerts.topic_arn)
        # A CloudWatch alarm can notify only a topic in its own region
        # (cds-snc/notification-terraform#128: "Invalid region ... specified").
        if region not in site_regions:
            problems.append(
                f"{PROJECT}:alerts.topicArn: {alerts.topic_arn!r} is in {region}, where no "
                f"site is ({', '.join(sorted(set(site_regions)))}); an alarm can only "
                "notify a topic in its own region"
            )
    return problems
