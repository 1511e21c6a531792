"""The vLLM tests run in .venv-vllm (``make test``) against the steerkern installed there, whose
``_C`` is built for that environment's torch; the source tree's own build is for .venv's."""

import os

# Before vLLM is imported: a small KV cache (not 15 GiB), the engine in this process (fast
# starts), and vLLM's CI compile settings for the compiled engines (Dynamo traces the model
# with the eager backend, no warm-up; the pipeline-parallel test compiles with inductor).
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_CI_ENV", "1")

import pytest  # noqa: E402

import steerkern  # noqa: E402
import tiny  # noqa: E402

if "site-packages" not in steerkern.__file__:
    raise pytest.UsageError(
        f"tests_vllm imported steerkern from {steerkern.__file__}; run them with .venv-vllm/bin/pytest "
        "(make test), which uses the copy installed in .venv-vllm"
    )


@pytest.fixture(scope="session")
def hf_model():
    return tiny.build_model()


@pytest.fixture(scope="session")
def dictionary():
    return tiny.build_dictionary()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, hf_model):
    return str(tiny.write_model(tmp_path_factory.mktemp("tiny-gemma2"), hf_model))


@pytest.fixture(scope="session")
def dictionary_file(tmp_path_factory, dictionary):
    path = tmp_path_factory.mktemp("dictionary") / "concepts.safetensors"
    dictionary.save(path)
    return str(path)


@pytest.fixture(scope="session")
def oracle(hf_model, dictionary):
    """Greedy tokens of one request alone through transformers + Steerer, memoized."""
    memo = {}

    def generate(tokens, new_tokens, program, layers=tiny.STEERED_LAYERS):
        key = (tuple(tokens), new_tokens, repr(program), tuple(layers))
        if key not in memo:
            memo[key] = tiny.hf_generate(hf_model, dictionary, tokens, new_tokens, program, layers)
        return memo[key]

    return generate

