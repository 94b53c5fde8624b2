"""The diff as a review: every day-2 change of the README's table reads in short lines."""

from __future__ import annotations

import re

import pytest

from plan import diff
from plan.document import Document, public_document
from plan.engine import Plan
from plan.review import CLIPPED, MAX_LINE, readable_text, short_urn, short_value
from tests.plan_variants import DAY2


@pytest.fixture(scope="module")
def base(dev_preview_plan: Plan) -> Document:
    return public_document(dev_preview_plan)


@pytest.mark.parametrize("change", sorted(DAY2))
def test_every_day2_change_diffs_in_lines_of_at_most_200(change, base, dev_variant):
    after = public_document(dev_variant(change))
    changes = diff.compare(base, after)

    text = diff.render("dev", "HEAD", "0" * 40, changes, after=after, before=base)

    lines = text.splitlines()
    assert any(c.op != "same" for c in changes), change
    longest = max(lines, key=len)
    assert len(longest) <= MAX_LINE, longest[:120]
    # Nothing needed cutting: the lines are short because the values are readable. Only
    # a value a replacement makes unknown is abbreviated (which value, not all of it).
    assert CLIPPED not in text
    cut = [line for line in lines if re.search(r"\(\d+ characters\)", line)]
    assert [line for line in cut if not line.endswith('"(unknown after replace)"')] == []
    # No URN, no escaped JSON, no base64 blob.
    assert "urn:pulumi:" not in text
    assert '\\"' not in text.replace('\\"$', "")
    # A summary on top, and each change says what it costs.
    assert lines[2].startswith("This change replaces ")
    for at, line in enumerate(lines):
        if line[:2] in ("+ ", "- ", "~ ", "+-"):
            assert lines[at + 1].startswith("      = "), line


def test_gateway_replacement_and_in_place_changes_are_told_apart(base, dev_variant):
    replaced = diff.compare(base, public_document(dev_variant("interface-name")))
    in_place = diff.compare(base, public_document(dev_variant("keepalive")))

    summary = " ".join(diff.render("dev", "HEAD", "0" * 40, replaced).splitlines()[2:6])
    assert "This change replaces 1 gateway (beta: down for the boot, about 1-3 min on AWS)" in (
        summary
    )
    summary = " ".join(diff.render("dev", "HEAD", "0" * 40, in_place).splitlines()[2:6])
    assert "This change replaces 0 gateways" in summary
    assert "alpha's and beta's applies re-run in place, no outage" in summary
    assert "the running gateways stay as they are" in summary


def test_user_data_change_shows_the_changed_lines_decoded(base, dev_variant):
    changes = diff.compare(base, public_document(dev_variant("interface-name")))
    text = diff.render("dev", "HEAD", "0" * 40, changes)

    lines = text.splitlines()
    at = lines.index("      ~ userDataBase64 (gzip+base64, shown decoded): [forces replacement]")
    body = lines[at + 1 : next(i for i in range(at + 1, len(lines)) if lines[i][:6] != " " * 6)]
    assert any(line.startswith("          +") and "wgC" in line for line in body)
    assert any(line.startswith("          -") and "wgB" in line for line in body)
    assert len(body) < 200


def test_readable_text_and_short_forms():
    state = '{"config": "[Interface]\\nMTU = 1420\\n", "presharedKey": true}'
    how, text = readable_text("insecureValue", state) or ("", "")
    assert how == "JSON, text fields shown as blocks"
    assert text.splitlines() == [
        "config: |",
        "    [Interface]",
        "    MTU = 1420",
        "presharedKey: true",
    ]
    assert readable_text("policy", '{"Version": "2012-10-17"}') == (
        "JSON",
        '{\n  "Version": "2012-10-17"\n}\n',
    )
    assert readable_text("name", "plain") is None
    urn = "urn:pulumi:dev::wg-site-to-site::a$b:index:C$aws:ec2/instance:Instance::beta-gateway"
    assert short_urn(urn) == "Instance beta-gateway"
    assert short_value("a" * 64) == "digest aaaaaaaaaaaa..."
    assert short_value("plain") == '"plain"'
