"""Test-only precisions for the plugin's pytester projects (registered from a project's conftest)."""

import textwrap

CUSTOM_PRECISIONS = textwrap.dedent(
    """
    import os

    import torch

    def _damaged(ctx):
        # a "quantization" that flips the classifier: every prediction changes
        model = ctx.load()
        with torch.no_grad():
            model.classifier.weight.neg_()
            model.classifier.bias.neg_()
        return model

    def _five_times(model):
        # real extra work on every forward pass: the model runs five times (a wide margin over the
        # limits the tests set, so that a busy machine cannot hide it)
        forward = model.forward
        def five_times(*args, **kwargs):
            for _ in range(4):
                forward(*args, **kwargs)
            return forward(*args, **kwargs)
        model.forward = five_times
        return model

    def _slow(ctx):
        return _five_times(ctx.load())

    def _flip_rare(ctx):
        # a model that errs on exactly the two texts containing the word "w4": FP32 is right on all 60
        from transformers import AutoTokenizer

        rare = AutoTokenizer.from_pretrained(ctx.model_dir).convert_tokens_to_ids("w4")
        model = ctx.load()
        forward = model.forward
        def flipped(*args, **kwargs):
            out = forward(*args, **kwargs)
            if (kwargs["input_ids"] == rare).any():
                out["logits"] = -out["logits"]
            return out
        model.forward = flipped
        return model

    def pytest_quantreg_precisions(registry):
        registry.register("damaged", _damaged, devices=["cpu"], max_drop=1.0)
        registry.register("flip-rare", _flip_rare, devices=["cpu"], max_drop=100.0)
        registry.register("slow", _slow, devices=["cpu"], max_latency_ratio={"cpu": 1.5})
        registry.register("needs-missing", _damaged, requires=["no_such_module_xyz"])
        if os.environ.get("TINY_SLOW"):  # "a new release made int8 slower", under the same name
            build = registry["int8-dynamic"].build
            registry.replace("int8-dynamic", build=lambda ctx: _five_times(build(ctx)))
    """
)
