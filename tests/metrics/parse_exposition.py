#!/usr/bin/env python3
"""Reads a Prometheus text exposition on stdin and prints its samples as JSON.

The parser is the Prometheus project's own Python client
(prometheus_client.parser), an implementation independent of the Rust
encoder that wrote the text: a line it cannot parse makes this exit
non-zero. Each sample is printed with its family's name and type:
[{"family": ..., "type": ..., "name": ..., "labels": {...}, "value": ...}].
"""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families


def main() -> int:
    samples = []
    for family in text_string_to_metric_families(sys.stdin.read()):
        for sample in family.samples:
            samples.append(
                {
                    "family": family.name,
                    "type": family.type,
                    "name": sample.name,
                    "labels": sample.labels,
                    "value": sample.value,
                }
            )
    json.dump(samples, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
