"""Tests for dcl_teach.provenance: one description of the machine, with the same keys everywhere."""

from __future__ import annotations

import json

import torch

from dcl_teach.provenance import cpu_model, machine_info

KEYS = {
    "cpu",
    "cores",
    "torch_threads",
    "torch",
    "python",
    "platform",
    "dcl_teach",
    "device",
    "device_name",
    "cuda",
    "load_average_1min",
}


def test_keys_values_and_json():
    info = machine_info("cpu")
    assert set(info) == KEYS
    assert info["cpu"] == cpu_model() and info["device_name"] == info["cpu"]
    assert info["torch"] == torch.__version__ and info["torch_threads"] == torch.get_num_threads()
    assert json.loads(json.dumps(info)) == info  # goes into JSON reports as it is


def test_a_torch_device_is_accepted():
    assert machine_info(torch.device("cpu"))["device"] == "cpu"


def test_benchmark_and_sweep_reports_use_it():
    from dcl_teach import bench, bench_train, sweep

    assert bench.machine_info is bench_train.machine_info is sweep.machine_info is machine_info
