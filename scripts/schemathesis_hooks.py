"""Schemathesis hooks for scripts/schemathesis.sh (loaded through its config's `hooks`).

docs/openapi.yaml is exact wherever JSON Schema can state the rule, so every check runs on every
operation. The one check it cannot fully serve is `positive_data_acceptance` ("a request the
schema allows is accepted"), for four rules no JSON Schema can state. Only a refusal for one of
those, with exactly its status and error code, on exactly its operation, is dropped here (the
run's summary counts them as "dropped by `filter_failure`"); any other refusal of a schema-valid
request still fails the run, and so does every other check.

- The epoch a request names must be one the server serves (the current one, the previous one in
  its grace period, the next one once built): time, not shape. Generated JSON bodies are given
  the current one (the config's `parameters`), but a binary body carries it in its first 8
  bytes, which a generator of arbitrary bytes cannot hit, and the spec's examples (the
  protocol's test vectors) name old ones: 410 `epoch_unavailable` / `key_epoch_unavailable`,
  only when the request named an epoch other than the current one the answer gives.
- A binary body is 8 + 8n bytes (discovery) or 8 + 32n (evaluation); JSON Schema bounds a
  string's length but cannot ask for a multiple: 422 `invalid_fingerprint_length` /
  `invalid_element_length`, only for a binary body (in JSON the patterns fix each length).
- A blinded element must be the canonical encoding of a non-identity ristretto255 element, a
  property of the curve, not of the text: 422 `invalid_element`.
- A number may appear in only one of `add`, `remove` and `hide`; `uniqueItems` covers one list,
  not three: 422 `conflicting_changes`.
"""

from __future__ import annotations

import json

import schemathesis

BINARY = "application/octet-stream"

# (operationId, status, code) → the requests for which that refusal is one of the rules above.
INEXPRESSIBLE = {
    ("discover", 410, "epoch_unavailable"): "another epoch",
    ("discover", 422, "invalid_fingerprint_length"): "binary",
    ("privateEvaluate", 410, "key_epoch_unavailable"): "another epoch",
    ("privateEvaluate", 422, "invalid_element_length"): "binary",
    ("privateEvaluate", 422, "invalid_element"): "any",
    ("changeRegistrations", 422, "conflicting_changes"): "any",
}


@schemathesis.hook
def filter_failure(context, failure, case, response) -> bool:
    """Keeps every failure but a schema-valid request refused for a rule JSON Schema cannot state."""
    if "positive_data_acceptance" not in getattr(failure, "checks", ()):
        return True
    answer = _json(response.content)
    if not isinstance(answer, dict):
        return True
    code = answer.get("code")
    operation = case.operation.definition.raw.get("operationId")
    scope = INEXPRESSIBLE.get((operation, response.status_code, code))
    if scope == "any":
        return False
    if scope == "binary":
        return case.media_type != BINARY
    if scope == "another epoch":
        if code == "epoch_unavailable":
            current = (answer.get("current") or {}).get("epoch")
            named = _named_epoch(case, "epoch")
        else:
            current = answer.get("current_key_epoch")
            named = _named_epoch(case, "key_epoch")
        return named is None or named == current
    return True


def _json(content):
    try:
        return json.loads(content)
    except (ValueError, TypeError):
        return None


def _named_epoch(case, field):
    """The epoch a discovery or evaluation request names (its first 8 bytes in binary)."""
    body = case.body
    if case.media_type == BINARY:
        raw = body if isinstance(body, bytes) else str(body).encode(errors="ignore")
        return int.from_bytes(raw[:8], "big") if len(raw) >= 8 else None
    if isinstance(body, dict) and isinstance(body.get(field), int):
        return body[field]
    return None
