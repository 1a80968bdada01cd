"""Reading the service's /metrics text in tests."""

import re


def served_versions(metrics: str, role: str = "champion") -> dict[str, str]:
    """Worker pid -> the version it serves in `role`, from the per-worker driver_ranker_model_version."""
    served = {}
    for line in metrics.splitlines():
        if line.startswith("driver_ranker_model_version{") and f'role="{role}"' in line:
            pid = re.search(r'pid="(\d+)"', line).group(1)
            served[pid] = str(int(float(line.rsplit(" ", 1)[1])))
    return served
