"""Keep the benchmark JSON small enough to commit: summary statistics, not every round's raw time."""


def pytest_benchmark_update_json(config, benchmarks, output_json):
    for bench in output_json.get("benchmarks", []):
        bench.get("stats", {}).pop("data", None)
