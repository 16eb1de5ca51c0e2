"""Reading a `/metrics` page the way Prometheus does, with prometheus-client's parser."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


class Scrape:
    def __init__(self, text: str) -> None:
        families = list(text_string_to_metric_families(text))
        self.samples = [
            (sample.name, sample.labels, sample.value)
            for family in families
            for sample in family.samples
        ]
        # Series names a query may use, samples or not (a labelled counter starts empty).
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
        self.declared = {family.name + suffix for family in families
                         for suffix in suffixes.get(family.type, ("",))}

    def value(self, name: str, **labels: str) -> float:
        """The sample `name` with exactly these labels (0 when absent, as for a counter)."""
        for sample_name, sample_labels, value in self.samples:
            if sample_name == name and sample_labels == labels:
                return value
        return 0.0

    def has(self, name: str, **labels: str) -> bool:
        return any(n == name and all(s.get(k) == v for k, v in labels.items())
                   for n, s, _ in self.samples)

    def label_values(self, label: str) -> set[str]:
        return {s[label] for _, s, _ in self.samples if label in s}


def scrape(base_url: str) -> Scrape:
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=10) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain")
        return Scrape(reply.read().decode())
