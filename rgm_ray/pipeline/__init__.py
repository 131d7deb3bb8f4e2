"""The whole pipeline as one job: data -> models -> generate -> weigh -> resample -> evaluate -> ssl -> report."""
