"""``steerkern serve`` as a real process on a local port: steered and unsteered completions
equal the oracle, a bad program is answered 400 and the server keeps serving."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import tiny
from tiny import NEW_TOKENS

import steerkern.vllm as skv

START_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post(url, body) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def server(model_dir, dictionary_file, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    command = [str(Path(sys.executable).parent / "steerkern"), "serve", "--model", model_dir,
               "--dictionary", dictionary_file, "--layer", "1", "--layer", "2",
               "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "256",
               "--enforce-eager", "--block-size", "16", "--max-num-seqs", "4", "--max-num-batched-tokens", "32"]
    with open(log, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the server did not answer within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
                time.sleep(1)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode is not None


def complete(server, model_dir, tokens, program):
    body = {"model": model_dir, "prompt": tokens, "max_tokens": NEW_TOKENS, "temperature": 0,
            "ignore_eos": True, "return_token_ids": True}
    if program is not None:
        body["vllm_xargs"] = program
    return post(f"{server}/v1/completions", body)


def test_steered_and_unsteered_completions(server, model_dir, oracle):
    for tokens, program in [(tiny.prompt(21, 20), skv.program([3, "topic 7"], [2.0, -1.5], prefix_length=1)),
                            (tiny.prompt(19, 21), skv.program(5, 1.5, mode="clamp")),
                            (tiny.prompt(21, 20), None)]:
        status, answer = complete(server, model_dir, tokens, program)
        assert status == 200, answer
        tiny.check_against_oracle(oracle, [(tokens, program)], [[answer["choices"][0]["token_ids"]]])


def test_a_bad_program_is_answered_400(server, model_dir, oracle):
    status, answer = complete(server, model_dir, tiny.prompt(9, 22), {"steerkern_concepts": ["no such topic"]})
    assert status == 400 and "no such topic" in json.dumps(answer), answer
    tokens, program = tiny.prompt(9, 23), skv.program(2, 2.0)
    status, answer = complete(server, model_dir, tokens, program)
    assert status == 200, answer
    tiny.check_against_oracle(oracle, [(tokens, program)], [[answer["choices"][0]["token_ids"]]])
