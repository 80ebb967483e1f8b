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
        return _flipping(ctx.load(), ctx)

    def _flipping(model, ctx):
        from transformers import AutoTokenizer

        rare = AutoTokenizer.from_pretrained(ctx.model_dir).convert_tokens_to_ids("w4")
        forward = model.forward
        def flipped(*args, **kwargs):
            out = forward(*args, **kwargs)
            if (kwargs["input_ids"] == rare).any():
                out["logits"] = -out["logits"]
            return out
        model.forward = flipped
        return model

    CORRUPTED = "bert.encoder.layer.1.output.dense"

    def _corrupt_one(ctx):
        # int8-dynamic with noise (3x the weights' spread) added to exactly one unit, unless it is kept in FP32
        model = ctx.load()
        if not ctx.keeps(CORRUPTED):
            layer = model.get_submodule(CORRUPTED)
            noise = torch.randn(layer.weight.shape, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                layer.weight.add_(noise * layer.weight.std() * 3)
        linear = {n for n, m in model.named_modules() if type(m) is torch.nn.Linear and not ctx.keeps(n)}
        return torch.ao.quantization.quantize_dynamic(model, linear, dtype=torch.qint8)

    def pytest_quantreg_precisions(registry):
        registry.register(
            "corrupt-one", _corrupt_one, devices=["cpu"], max_drop=100.0, max_flip_rate=10.0, backend="torch.ao quantize_dynamic"
        )
        registry.register("damaged", _damaged, devices=["cpu"], max_drop=1.0)
        registry.register("flip-rare", _flip_rare, devices=["cpu"], max_drop=100.0)
        registry.register("slow", _slow, devices=["cpu"], max_latency_ratio={"cpu": 1.5})
        registry.register("needs-missing", _damaged, requires=["no_such_module_xyz"])
        build = registry["int8-dynamic"].build
        if os.environ.get("TINY_SLOW"):  # "a new release made int8 slower", under the same name
            registry.replace("int8-dynamic", build=lambda ctx: _five_times(build(ctx)))
        if os.environ.get("TINY_FLIP"):  # "a new release changed two of int8's predictions", under the same name
            registry.replace("int8-dynamic", build=lambda ctx: _flipping(build(ctx), ctx))
    """
)
