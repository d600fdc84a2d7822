"""Policy server and client: wire format, metadata, auth, limits, faults and a decoder fuzz."""

from __future__ import annotations

import random
import time

import msgpack
import numpy as np
import pytest
import torch

from policies.mlp import MLPPolicy, MLPPolicyConfig
from real_robot.client import PolicyClient, PolicyServerError
from real_robot.policy_runtime import LocalPolicy, resolve_policy_dir
from real_robot.protocol import ProtocolError, check_observation, decode_message, encode_message
from real_robot.server import PolicyServer


def tiny_policy(tmp_path, chunk_size=2):
    torch.manual_seed(0)
    policy = MLPPolicy(MLPPolicyConfig(obs_dim=31, action_dim=7, chunk_size=chunk_size, hidden_sizes=(16,)))
    torch.nn.init.normal_(policy.actor[-1].weight, std=0.3)
    policy.save_pretrained(tmp_path / "policy")
    return LocalPolicy.from_path(tmp_path / "policy")


def observation(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "observation.state": rng.standard_normal(25).astype(np.float32),
        "observation.environment_state": rng.standard_normal(6).astype(np.float32),
        "task": "reach the green target",
        "timestamp": time.time(),
    }


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    local = tiny_policy(tmp_path_factory.mktemp("policy"))
    server = PolicyServer(local, token="s3cret", max_message_bytes=64 * 1024).start()
    yield local, server
    server.stop()


@pytest.mark.parametrize("dtype", ["float32", "float64", "uint8", "int64", "bool", "float16"])
def test_array_roundtrip(dtype):
    array = (np.arange(24).reshape(2, 3, 4) % 3).astype(dtype)
    message = decode_message(encode_message("infer", id=1, obs={"observation.x": array}))
    out = message["obs"]["observation.x"]
    assert out.dtype == array.dtype and out.shape == array.shape
    np.testing.assert_array_equal(out, array)


def test_decoder_refuses_objects_and_bad_buffers():
    with pytest.raises(ProtocolError, match="dtype"):
        encode_message("action", action=np.array([object()], dtype=object))
    base = {"v": 1, "type": "action", "id": 0}
    bad_arrays = [
        {"__ndarray__": True, "dtype": "|O", "shape": [1], "data": b"\0" * 8},  # pickle-able object arrays
        {"__ndarray__": True, "dtype": "<f4", "shape": [3], "data": b"\0" * 8},  # length mismatch
        {"__ndarray__": True, "dtype": "<f4", "shape": [-1], "data": b""},
        {"__ndarray__": True, "dtype": "<f4", "shape": [1 << 40, 1 << 40], "data": b""},
        {"__ndarray__": True, "dtype": "<f4", "shape": [1], "data": "text", },
        {"__ndarray__": True, "dtype": "<f4", "shape": [1], "data": b"\0" * 4, "extra": 1},
    ]
    for array in bad_arrays:
        with pytest.raises(ProtocolError):
            decode_message(msgpack.packb({**base, "action": array}))
    with pytest.raises(ProtocolError, match="version"):
        decode_message(msgpack.packb({"v": 2, "type": "action"}))
    with pytest.raises(ProtocolError, match="type"):
        decode_message(msgpack.packb({"v": 1, "type": "exec"}))
    with pytest.raises(ProtocolError, match="msgpack"):
        decode_message(msgpack.packb(msgpack.ExtType(1, b"x")))
    with pytest.raises(ProtocolError, match="exceeds"):
        decode_message(b"\0" * 100, max_bytes=10)
    nested: list = []
    for _ in range(20):
        nested = [nested]
    with pytest.raises(ProtocolError, match="nested"):
        decode_message(msgpack.packb({"v": 1, "type": "infer", "obs": nested}))
    with pytest.raises(ProtocolError, match="NaN"):
        check_observation({"observation.state": np.array([np.nan], dtype=np.float32)})


def test_decoder_fuzz_10000_messages():
    """Random bytes, random msgpack values and byte-mutated valid messages: only ProtocolError."""
    rng = random.Random(0)
    valid = [
        encode_message("infer", id=3, obs={k: v for k, v in observation(1).items() if k != "timestamp"}),
        encode_message("action", id=3, action=np.ones((4, 7), dtype=np.float32), infer_ms=1.5),
        encode_message("metadata", metadata={"features": {"observation.state": None}, "chunk_size": 4}),
        encode_message("hello", token="abc"),
    ]

    def random_value(depth=0):
        choice = rng.randrange(9 if depth < 4 else 6)
        return [
            lambda: rng.randint(-(2**63), 2**64 - 1), lambda: rng.random(), lambda: None,
            lambda: rng.randbytes(rng.randrange(16)), lambda: "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(8))),
            lambda: rng.choice([True, False]),
            lambda: [random_value(depth + 1) for _ in range(rng.randrange(4))],
            lambda: {rng.choice(["v", "type", "obs", "id", "__ndarray__", "dtype", "shape", "data", "x"]): random_value(depth + 1) for _ in range(rng.randrange(5))},
            lambda: {"__ndarray__": True, "dtype": rng.choice(["<f4", "|u1", "<f8", "|O", "<c8"]), "shape": [rng.randrange(-2, 5) for _ in range(rng.randrange(4))], "data": rng.randbytes(rng.randrange(32))},
        ][choice]()

    outcomes = {"ok": 0, "error": 0}
    for i in range(10_000):
        kind = i % 3
        if kind == 0:
            data = rng.randbytes(rng.randrange(64))
        elif kind == 1:
            data = msgpack.packb({"v": 1, "type": rng.choice(["infer", "action", "hello", "x"]), "obs": random_value()})
        else:
            data = bytearray(rng.choice(valid))
            for _ in range(rng.randrange(1, 6)):
                op = rng.randrange(3)
                pos = rng.randrange(len(data))
                if op == 0:
                    data[pos] = rng.randrange(256)
                elif op == 1:
                    del data[pos : pos + rng.randrange(1, 8)]
                else:
                    data[pos:pos] = rng.randbytes(rng.randrange(1, 8))
            data = bytes(data)
        try:
            message = decode_message(data, max_bytes=4096)
            if message["type"] == "infer":
                check_observation(message.get("obs"))
            outcomes["ok"] += 1
        except ProtocolError:
            outcomes["error"] += 1
    assert outcomes["ok"] + outcomes["error"] == 10_000
    assert outcomes["ok"] > 100 and outcomes["error"] > 5000  # both paths exercised


def test_metadata_and_inference_match_local(served):
    local, server = served
    assert server.host == "127.0.0.1"
    client = PolicyClient(server.url, token="s3cret")
    meta = client.metadata
    assert meta["schema"] == 1 and meta["chunk_size"] == 2 and meta["action_dim"] == 7
    assert meta["control_hz"] == 20.0 and set(meta["features"]) == {"observation.state", "observation.environment_state"}
    obs = observation(2)
    remote = client.infer(obs)
    assert remote.shape == (2, 7) and remote.dtype == np.float32
    np.testing.assert_array_equal(remote, local.infer(obs))
    client.close()


def test_token_auth(served):
    _, server = served
    with pytest.raises(PolicyServerError, match="unauthorized"):
        PolicyClient(server.url, token="wrong")
    with pytest.raises(PolicyServerError, match="unauthorized"):
        PolicyClient(server.url)


def test_malformed_and_oversized_messages_do_not_break_the_server(served):
    _, server = served
    client = PolicyClient(server.url, token="s3cret")
    reply = client.send_raw(b"\xc1garbage")
    assert reply["type"] == "error" and "msgpack" in reply["message"]
    reply = client.send_raw(encode_message("infer", id=7, obs={"observation.state": np.zeros(3, dtype=np.float32)}))
    assert reply["type"] == "error" and reply["id"] == 7 and "lacks" in reply["message"]
    bad = observation(3)
    bad["observation.state"] = np.full(25, np.nan, dtype=np.float32)
    with pytest.raises(PolicyServerError, match="NaN"):
        client.infer(bad)
    assert client.infer(observation(3)).shape == (2, 7)  # the connection is still good
    with pytest.raises(PolicyServerError):
        client.send_raw(b"\0" * (128 * 1024))  # over max_message_bytes: the server closes this connection
    client.close()
    again = PolicyClient(server.url, token="s3cret")  # and keeps serving others
    assert again.infer(observation(4)).shape == (2, 7)
    again.close()


def test_server_gone_raises_promptly(tmp_path):
    local = tiny_policy(tmp_path)
    server = PolicyServer(local).start()
    client = PolicyClient(server.url, timeout_s=0.5)
    client.infer(observation())
    server.stop()
    start = time.perf_counter()
    with pytest.raises(PolicyServerError):
        client.infer(observation())
    assert time.perf_counter() - start < 1.0
    with pytest.raises(PolicyServerError, match="Cannot reach"):
        PolicyClient(server.url, timeout_s=0.5)


def test_resolve_policy_dir(tmp_path):
    tiny_policy(tmp_path)
    assert resolve_policy_dir(tmp_path / "policy") == tmp_path / "policy"
    assert resolve_policy_dir(tmp_path) == tmp_path / "policy"
    with pytest.raises(FileNotFoundError):
        resolve_policy_dir(tmp_path / "missing")
