"""pytest-benchmark suite settings: the device to time on, and one shared setup per shape."""

import pytest
import torch

from steerkern import bench


def pytest_addoption(parser):
    parser.addoption("--bench-device", default="auto", help="cpu or cuda (default: cuda when available)")


def pytest_generate_tests(metafunc):
    if {"case", "provider"} <= set(metafunc.fixturenames):
        metafunc.parametrize(("case", "provider"), metafunc.module.provider_params(bench_device(metafunc.config).type))


def bench_device(config) -> torch.device:
    name = config.getoption("--bench-device")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


@pytest.fixture(scope="session")
def device(request):
    device = bench_device(request.config)
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("--bench-device cuda, but CUDA is not available")
    return device


class SharedWorkloads:
    """Keeps the workload of the shape being timed, so that its providers share inputs and the
    torch.compile of the reference; the previous shape's tensors are freed when the next one starts."""

    def __init__(self, device):
        self.device = device
        self.case, self.workload = None, None

    def get(self, case: bench.Case) -> bench.Workload:
        if case != self.case:
            self.case, self.workload = None, None
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self.workload, self.case = bench.prepare(case, self.device), case
        return self.workload


@pytest.fixture(scope="session")
def workloads(device):
    return SharedWorkloads(device)
