"""The Ray Serve application of the guarded generator.

The deployments live in :mod:`forewarn.serve.serving` and :mod:`forewarn.serve.deployments`, inside the
installed package, so every Ray worker (and ``serve deploy`` on a remote cluster) can import them;
``serve/config.yaml`` names ``forewarn.serve.serving:build_app`` for that reason. This module is the entry
point from the repository root:

    serve run serve/config.yaml          # the config file beside this module
    serve run serve.app:build_app        # the packaged defaults (forewarn/defaults/serve.yaml)
    python serve/app.py --config X.yaml  # same as `forewarn serve --config X.yaml`
"""

from forewarn.serve.deployments import GeneratorDeployment, JudgeDeployment
from forewarn.serve.serving import OpenAIIngress, app_from_config, build_app

__all__ = ["GeneratorDeployment", "JudgeDeployment", "OpenAIIngress", "app_from_config", "build_app"]

if __name__ == "__main__":
    from forewarn.serve.cli import app as _cli

    _cli()
