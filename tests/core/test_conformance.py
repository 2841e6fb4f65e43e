"""The conformance table against Hugging Face: every honoured field with a non-default value gives
Hugging Face's logits and attention patterns (float32 and float64); every refused value is refused
with an error naming the config class, the field and the value."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import transformers
from conftest import striped_image

import vh_lens
from vh_lens.core import conformance
from vh_lens.core.conformance import FIELD_RULES, INERT_FIELDS, check_conformance
from vh_lens.core.loading import hooked_config
from vh_lens.testing import tiny_llava

QUESTIONS = ["how many dogs?", "what color is the cat in this picture ?", "is there a red circle in the image"]
IMAGES = ((70, 40), (50, 90), (64, 64))


@dataclasses.dataclass(frozen=True)
class Case:
    """Honoured (class, field) rows set to non-default values on one tiny model: ``rule`` first,
    ``also`` the rows the same model proves beside it."""

    rule: tuple[str, str]
    kind: str = "llava"
    backbone: str = "llama"
    text: tuple = ()
    vision: tuple = ()
    llava: tuple = ()
    n_kv: int | None = None
    also: tuple = ()

    @property
    def rules(self) -> tuple[tuple[str, str], ...]:
        return (self.rule, *self.also)

    @property
    def id(self) -> str:
        overrides = dict(self.text + self.vision + self.llava)
        value = overrides.get(self.rule[1], "tiny")
        more = f"+{len(self.also)}" if self.also else ""
        kv = f"-kv{self.n_kv}" if self.n_kv and value != "tiny" else ""
        kind = f"-{self.kind}" if self.kind != "llava" and not self.rule[0].startswith(("Llava", "VipLlava")) else ""
        return f"{self.rule[0]}.{self.rule[1]}={value}{more}{kv}{kind}".replace(" ", "")


_WINDOW = 5  # prompts are ~30 positions long: a window of 5 masks most of each row


def _cases() -> list[Case]:
    cases = []
    generic = {
        "num_key_value_heads": None,
        "head_dim": 32,
        "hidden_act": "gelu_new",
        "rms_norm_eps": 0.3,
        "max_position_embeddings": 256,
        "rope_parameters": {"rope_type": "default", "rope_theta": 37.0},
        "attention_dropout": 0.5,
    }
    for field, value in generic.items():  # Llama: one field at a time
        text = () if value is None else ((field, value),)
        cases.append(Case(("LlamaConfig", field), text=text, n_kv=2 if value is None else None))
    for cls, bb in {"MistralConfig": "mistral", "Qwen2Config": "qwen2", "Phi3Config": "phi3"}.items():
        # the same fields, all on one model per backbone (the code path is the Llama one)
        text = tuple((f, v) for f, v in generic.items() if v is not None)
        cases.append(
            Case(
                (cls, "head_dim"),
                backbone=bb,
                text=text,
                n_kv=1 if bb == "mistral" else 2,
                also=tuple((cls, f) for f in generic if f != "head_dim"),
            )
        )
    llama3 = {
        "rope_type": "llama3",
        "rope_theta": 5000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    }
    for act in ("gelu", "gelu_fast", "gelu_pytorch_tanh", "relu", "relu2", "swish"):
        cases.append(Case(("LlamaConfig", "hidden_act"), text=(("hidden_act", act),)))
    cases += [
        Case(("LlamaConfig", "rope_parameters"), text=(("rope_parameters", llama3),), n_kv=2),
        Case(("MistralConfig", "rope_parameters"), backbone="mistral", text=(("rope_parameters", llama3),)),
        Case(("Qwen2Config", "rope_parameters"), backbone="qwen2", text=(("rope_parameters", llama3),)),
        Case(
            ("Phi3Config", "rope_parameters"),
            backbone="phi3",
            text=(("rope_parameters", {"rope_type": "default", "rope_theta": 37.0, "partial_rotary_factor": 0.5}),),
        ),
        Case(("LlamaConfig", "attention_bias"), text=(("attention_bias", True),)),
        Case(("LlamaConfig", "attention_bias"), text=(("attention_bias", True),), n_kv=2),
        Case(("LlamaConfig", "pretraining_tp"), text=(("pretraining_tp", 2),)),
        Case(("MistralConfig", "sliding_window"), backbone="mistral", text=(("sliding_window", _WINDOW),)),
        Case(
            ("MistralConfig", "sliding_window"),
            kind="llava_next",
            backbone="mistral",
            text=(("sliding_window", _WINDOW),),
        ),
        Case(
            ("Qwen2Config", "use_sliding_window"),
            backbone="qwen2",
            text=(("use_sliding_window", True), ("sliding_window", _WINDOW), ("max_window_layers", 1)),
        ),
        Case(
            ("Qwen2Config", "max_window_layers"),
            backbone="qwen2",
            text=(("use_sliding_window", True), ("sliding_window", _WINDOW), ("max_window_layers", 0)),
        ),
        Case(
            ("Qwen2Config", "layer_types"),
            backbone="qwen2",
            text=(
                ("use_sliding_window", True),
                ("sliding_window", _WINDOW),
                ("layer_types", ["sliding_attention", "full_attention"]),
            ),
        ),
        Case(
            ("Qwen2Config", "sliding_window"),
            backbone="qwen2",
            text=(("use_sliding_window", True), ("sliding_window", 12), ("max_window_layers", 1)),
        ),
        Case(("Phi3Config", "sliding_window"), backbone="phi3", text=(("sliding_window", _WINDOW),)),
        Case(("Phi3Config", "resid_pdrop"), backbone="phi3", text=(("resid_pdrop", 0.5),)),
        Case(("Phi3Config", "embd_pdrop"), backbone="phi3", text=(("embd_pdrop", 0.5),)),
        Case(
            ("Phi3Config", "original_max_position_embeddings"),
            backbone="phi3",
            text=(("original_max_position_embeddings", 64),),
        ),
        Case(("LlavaConfig", "tie_word_embeddings"), llava=(("tie_word_embeddings", True),)),
        Case(("LlavaConfig", "projector_hidden_act"), llava=(("projector_hidden_act", "relu"),)),
        Case(("LlavaConfig", "vision_feature_layer"), llava=(("vision_feature_layer", -1),)),
        Case(("LlavaConfig", "multimodal_projector_bias"), llava=(("multimodal_projector_bias", False),)),
        Case(("LlavaConfig", "vision_feature_select_strategy"), llava=(("vision_feature_select_strategy", "full"),)),
        Case(("LlavaNextConfig", "tie_word_embeddings"), kind="llava_next", llava=(("tie_word_embeddings", True),)),
        Case(("LlavaNextConfig", "projector_hidden_act"), kind="llava_next", llava=(("projector_hidden_act", "relu"),)),
        Case(("LlavaNextConfig", "vision_feature_layer"), kind="llava_next", llava=(("vision_feature_layer", -1),)),
        Case(
            ("LlavaNextConfig", "multimodal_projector_bias"),
            kind="llava_next",
            llava=(("multimodal_projector_bias", False),),
        ),
        Case(("VipLlavaConfig", "tie_word_embeddings"), kind="vip_llava", llava=(("tie_word_embeddings", True),)),
        Case(("VipLlavaConfig", "projector_hidden_act"), kind="vip_llava", llava=(("projector_hidden_act", "relu"),)),
        Case(("VipLlavaConfig", "vision_feature_layer"), kind="vip_llava", llava=(("vision_feature_layer", [-1, 1]),)),
        Case(
            ("VipLlavaConfig", "projector_layernorm_eps"), kind="vip_llava", llava=(("projector_layernorm_eps", 0.3),)
        ),
        Case(("CLIPVisionConfig", "hidden_act"), vision=(("hidden_act", "gelu"),)),
        Case(("CLIPVisionConfig", "layer_norm_eps"), vision=(("layer_norm_eps", 0.3),)),
        Case(("CLIPVisionConfig", "attention_dropout"), vision=(("attention_dropout", 0.5),)),
    ]
    return cases


CASES = _cases()


_MODELS: dict[str, tuple] = {}


def _hf(case: Case, dtype: torch.dtype = torch.float32, *, cache: bool = True):
    """The case's Hugging Face model and processor, cached for the module (by the case's repr:
    its overrides hold lists and dicts) unless ``cache=False``."""
    key = f"{case!r}-{dtype}"
    if key in _MODELS:
        return _MODELS[key]
    built = _build(case, dtype)
    if cache:
        _MODELS[key] = built
    return built


def _build(case: Case, dtype: torch.dtype):
    hf, processor = tiny_llava(
        case.kind,
        case.backbone,
        n_kv_heads=case.n_kv,
        text_overrides=dict(case.text),
        vision_overrides=dict(case.vision),
        config_overrides=dict(case.llava),
    )
    hf = hf.to(dtype)
    if dtype == torch.float64:  # weights no float32 can hold: a pass through float32 would round them
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for param in hf.parameters():
                param.mul_(1 + 1e-9 * torch.randn(param.shape, generator=gen, dtype=torch.float64))
    return hf, processor


def _images():
    return [striped_image(size, i) for i, size in enumerate(IMAGES)]


def _references(hf, processor, prompts, images):
    out = []
    for prompt, image in zip(prompts, images):
        enc = processor(images=[image], text=[prompt], return_tensors="pt")
        enc["pixel_values"] = enc["pixel_values"].to(hf.dtype)
        with torch.no_grad():
            ref = hf(**enc, output_attentions=True)
        out.append((enc.input_ids[0], ref.logits[0].log_softmax(-1), [a[0] for a in ref.attentions]))
    return out


def _max_differences(hf, processor, *, n_samples: int = 3) -> dict[str, float]:
    """Max |log-softmax| and |pattern| differences to Hugging Face over processed/raw x fused/TL."""
    images = _images()[:n_samples]
    worst = {"logits": 0.0, "pattern": 0.0}
    refs = None
    for loader in (vh_lens.load_llava, vh_lens.core.load_llava_no_processing):
        model = loader(hf, processor=processor)
        batch = model.prepare(images=images, questions=QUESTIONS[:n_samples])
        assert len(set(batch.attention_mask.sum(-1).tolist())) == n_samples, "samples must differ in length"
        if refs is None:
            refs = _references(hf, processor, batch.prompts, images)
        with torch.no_grad():
            fused = model(batch)
            tl_logits, cache = model.run_with_cache(batch, names_filter=lambda n: n.endswith("hook_pattern"))
        for i, (ids, ref_logp, ref_patterns) in enumerate(refs):
            n = ids.shape[0]
            assert torch.equal(batch.input_ids[i, -n:], ids)
            for logits in (fused, tl_logits):
                d = (logits[i, -n:].log_softmax(-1) - ref_logp).abs().max().item()
                worst["logits"] = max(worst["logits"], d)
            for layer, ref_pattern in enumerate(ref_patterns):
                d = (cache["pattern", layer][i, :, -n:, -n:] - ref_pattern).abs().max().item()
                worst["pattern"] = max(worst["pattern"], d)
    return worst


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_honoured_field_matches_hugging_face(case):
    hf, processor = _hf(case, cache=False)
    for cls, field in case.rules:
        assert FIELD_RULES[cls, field].status == "honoured"
        config = {"LlavaConfig": hf.config, "LlavaNextConfig": hf.config, "VipLlavaConfig": hf.config}.get(cls)
        config = config or (hf.config.vision_config if "Vision" in cls else hf.config.text_config)
        assert type(config).__name__ == cls
        default = conformance._class_default(type(config), field)
        assert getattr(config, field) != default, f"{case.id}: {cls}.{field} must differ from the class default"
    worst = _max_differences(hf, processor)
    assert worst["logits"] <= 1e-4, f"{case.id}: log-softmax differs by {worst['logits']}"
    assert worst["pattern"] <= 1e-5, f"{case.id}: pattern differs by {worst['pattern']}"


def test_sliding_windows_land_on_the_right_layers():
    """Qwen2's window only on layers >= max_window_layers (or as layer_types says); Mistral on all."""

    def types(case):
        return hooked_config(_hf(case)[0].config).attn_types

    by_id = {c.id: c for c in CASES}
    assert types(by_id["Qwen2Config.use_sliding_window=True"]) == ["global", "local"]
    assert types(by_id["Qwen2Config.max_window_layers=0"]) == ["local", "local"]
    assert types(by_id["Qwen2Config.layer_types=['sliding_attention','full_attention']"]) == ["local", "global"]
    assert types(by_id[f"MistralConfig.sliding_window={_WINDOW}"]) == ["local", "local"]
    assert hooked_config(_hf(by_id[f"MistralConfig.sliding_window={_WINDOW}"])[0].config).window_size == _WINDOW
    assert types(by_id["Qwen2Config.head_dim=32+6-kv2"]) is None  # no window: global everywhere


def test_every_honoured_row_is_exercised():
    """Every row whose proof is the parametrised test above has at least one case."""
    exercised = {r for c in CASES for r in c.rules}
    for key, rule in FIELD_RULES.items():
        if rule.test == "tests/core/test_conformance.py::test_honoured_field_matches_hugging_face":
            assert key in exercised, f"{key}: no case"
        if rule.status == "honoured":
            assert rule.test, f"{key}: honoured without a test"


def test_every_declared_field_is_classified():
    """Every field the config classes declare is a table row or inert: the table is complete for
    the installed transformers (a field added later is refused when it differs from its default)."""
    for name in (*conformance.LLAVA_CLASSES, *conformance.TEXT_CLASSES, *conformance.VISION_CLASSES):
        cls = getattr(transformers, name)
        for f in dataclasses.fields(cls):
            assert (
                (name, f.name) in FIELD_RULES or f.name in INERT_FIELDS or f.name in ("text_config", "vision_config")
            ), f"{name}.{f.name} is neither in the table nor inert"
    rows = vh_lens.conformance_table()
    assert {r[2] for r in rows} == {"honoured", "refused", "inert"}
    assert ("LlamaConfig", "mlp_bias", "refused") in {r[:3] for r in rows}


# ------------------------------------------------------------------ refused


def _config(backbone="llama", kind="llava", **text):
    hf, _ = _hf(Case(("LlamaConfig", "hidden_size"), kind=kind, backbone=backbone))
    config = copy.deepcopy(hf.config)
    for k, v in text.items():
        setattr(config.text_config, k, v)
    return config


REFUSED = [
    ("llama", {"mlp_bias": True}, "LlamaConfig.mlp_bias = True (TransformerLens' gated MLP has no gate/up bias)"),
    ("llama", {"hidden_act": "quick_gelu"}, "LlamaConfig.hidden_act = 'quick_gelu'"),
    ("llama", {"hidden_act": "tanh"}, "LlamaConfig.hidden_act = 'tanh'"),
    (
        "llama",
        {"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}},
        "LlamaConfig.rope_parameters = {'rope_type': 'linear'",
    ),
    (
        "llama",
        {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}},
        "LlamaConfig.rope_parameters = {'rope_type': 'dynamic'",
    ),
    (
        "mistral",
        {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}},
        "MistralConfig.rope_parameters = {'rope_type': 'yarn'",
    ),
    (
        "phi3",
        {
            "rope_parameters": {
                "rope_type": "longrope",
                "rope_theta": 1e4,
                "short_factor": [1.0] * 8,
                "long_factor": [2.0] * 8,
            }
        },
        "Phi3Config.rope_parameters = {'rope_type': 'longrope'",
    ),
    (
        "phi3",
        {
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 1e4,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            }
        },
        "Phi3Config.rope_parameters = {'rope_type': 'llama3'",
    ),
    (
        "llama",
        {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}},
        "LlamaConfig.rope_parameters = {'rope_type': 'default', 'rope_theta': 10000.0, 'partial_rotary_factor': 0.5}",
    ),
    (
        "llama",
        {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 2]}},
        "LlamaConfig.rope_parameters = {'rope_type': 'default', 'rope_theta': 10000.0, 'mrope_section': [2, 2]} (rope parameter(s) ['mrope_section']",
    ),
    (
        "qwen2",
        {"layer_types": ["full_attention", "sliding_attention"]},
        "Qwen2Config.layer_types = ['full_attention', 'sliding_attention'] (sliding layers without a sliding_window",
    ),
    (
        "qwen2",
        {"layer_types": ["full_attention", "chunked_attention"]},
        "Qwen2Config.layer_types = ['full_attention', 'chunked_attention']",
    ),
    (
        "qwen2",
        {"layer_types": ["full_attention"]},
        "Qwen2Config.layer_types = ['full_attention'] (must list one attention type per layer)",
    ),
    (
        "mistral",
        {"layer_types": ["full_attention", "sliding_attention"]},
        "MistralConfig.layer_types = ['full_attention', 'sliding_attention'] (not a MistralConfig field",
    ),
    ("qwen2", {"attention_bias": True}, "Qwen2Config.attention_bias = True (not a Qwen2Config field"),
    ("mistral", {"sliding_window": 0}, "MistralConfig.sliding_window = 0"),
    ("llama", {"foo": 3}, "LlamaConfig.foo = 3 (not a LlamaConfig field"),
]


@pytest.mark.parametrize(("backbone", "text", "message"), REFUSED, ids=[m.split(" (")[0] for _, _, m in REFUSED])
def test_refused_text_field_names_field_and_value(backbone, text, message):
    config = _config(backbone, **text)
    with pytest.raises(vh_lens.UnsupportedModelError) as err:
        hooked_config(config)
    assert message in str(err.value)
    assert str(err.value).startswith("unsupported config: ")


def test_refused_llava_and_vision_fields():
    next_config = copy.deepcopy(_hf(Case(("LlavaNextConfig", "x"), kind="llava_next"))[0].config)
    next_config.vision_feature_select_strategy = "full"
    with pytest.raises(vh_lens.UnsupportedModelError, match=r"LlavaNextConfig.vision_feature_select_strategy = 'full'"):
        check_conformance(next_config)
    config = _config()
    config.vision_config.foo = 1
    with pytest.raises(vh_lens.UnsupportedModelError, match=r"CLIPVisionConfig.foo = 1 \(not a CLIPVisionConfig field"):
        check_conformance(config)


def test_field_not_in_the_table_is_refused_when_not_default(monkeypatch):
    """The fallback rule: a declared field without a row is refused unless it has the class default."""
    monkeypatch.delitem(FIELD_RULES, ("LlamaConfig", "attention_bias"))
    config = _config()
    check_conformance(config)  # attention_bias = False: the default, accepted
    config.text_config.attention_bias = True
    with pytest.raises(
        vh_lens.UnsupportedModelError,
        match=r"LlamaConfig.attention_bias = True \(differs from the default False and is not in",
    ):
        check_conformance(config)


def test_every_load_path_refuses(tmp_path):
    hf, processor = tiny_llava("llava", "llama", text_overrides={"mlp_bias": True})
    message = r"unsupported config: LlamaConfig.mlp_bias = True"
    with pytest.raises(vh_lens.UnsupportedModelError, match=message):
        vh_lens.load_llava(hf, processor=processor)
    hf.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    with pytest.raises(vh_lens.UnsupportedModelError, match=message):
        vh_lens.load_llava(tmp_path)


def test_untied_checkpoint_without_lm_head_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    hf, processor = _hf(Case(("LlavaConfig", "x")))
    hf.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    save_file(
        {k: v for k, v in state.items() if "lm_head" not in k},
        tmp_path / "model.safetensors",
        metadata={"format": "pt"},
    )
    with pytest.raises(vh_lens.CheckpointError, match="no tensor lm_head.weight"):  # found up front, before any read
        vh_lens.load_llava(tmp_path)


# ------------------------------------------------------------------ float64


def _rms_norm_f64(self, hidden_states):
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def _rotary_f64(self, x, position_ids):
    params = self.config.rope_parameters
    assert params.get("rope_type", "default") == "default", "the float64 rotary patch is the default rope only"
    dim = 2 * self.inv_freq.shape[0]
    inv_freq = 1.0 / (params["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    freqs = position_ids[..., None].to(torch.float64) * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)


def _eager_f64(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = torch.softmax(weights, dim=-1)  # in the input dtype: Hugging Face's eager path upcasts to float32 only
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


@pytest.fixture
def float64_reference(monkeypatch):
    """Hugging Face's text models computing norms, rotary and softmax in the input dtype (float64)."""
    patch_float64_reference(monkeypatch)


def patch_float64_reference(monkeypatch) -> None:
    """Patch the RMS norm, rotary embedding and eager attention of Hugging Face's Llama, Mistral,
    Qwen2 and Phi-3 to stay in the input dtype (they upcast to float32)."""
    from transformers.models.llama import modeling_llama
    from transformers.models.mistral import modeling_mistral
    from transformers.models.phi3 import modeling_phi3
    from transformers.models.qwen2 import modeling_qwen2

    for module, prefix in (
        (modeling_llama, "Llama"),
        (modeling_mistral, "Mistral"),
        (modeling_qwen2, "Qwen2"),
        (modeling_phi3, "Phi3"),
    ):
        monkeypatch.setattr(getattr(module, f"{prefix}RMSNorm"), "forward", _rms_norm_f64)
        monkeypatch.setattr(getattr(module, f"{prefix}RotaryEmbedding"), "forward", _rotary_f64)
        monkeypatch.setattr(module, "eager_attention_forward", _eager_f64)


FLOAT64_CASES = [
    Case(("LlamaConfig", "attention_bias"), text=(("attention_bias", True),), n_kv=2),
    Case(
        ("Qwen2Config", "use_sliding_window"),
        backbone="qwen2",
        text=(("use_sliding_window", True), ("sliding_window", _WINDOW), ("max_window_layers", 1)),
    ),
    Case(
        ("Phi3Config", "rope_parameters"),
        backbone="phi3",
        text=(("rope_parameters", {"rope_type": "default", "rope_theta": 37.0, "partial_rotary_factor": 0.5}),),
    ),
    Case(
        ("MistralConfig", "sliding_window"), kind="llava_next", backbone="mistral", text=(("sliding_window", _WINDOW),)
    ),
]


@pytest.mark.parametrize("case", FLOAT64_CASES, ids=[c.id for c in FLOAT64_CASES])
def test_float64_matches_float64_reference(case, float64_reference):
    hf, processor = _hf(case, torch.float64)
    worst = _max_differences(hf, processor, n_samples=2)
    assert worst["logits"] <= 1e-10, f"{case.id}: log-softmax differs by {worst['logits']}"
    assert worst["pattern"] <= 1e-10, f"{case.id}: pattern differs by {worst['pattern']}"


def test_float64_load_keeps_every_parameter_float64(tmp_path):
    hf, processor = _hf(FLOAT64_CASES[0], torch.float64)
    hf.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    for source in (hf, tmp_path):
        for loader in (vh_lens.load_llava, vh_lens.core.load_llava_no_processing):
            model = loader(source, processor=processor if source is hf else None)
            wrong = [n for n, p in model.named_parameters() if p.dtype != torch.float64]
            assert not wrong, f"not float64: {wrong[:5]}"
    raw = vh_lens.core.load_llava_no_processing(tmp_path)
    attn = hf.model.language_model.layers[0].self_attn
    # bit-exact: a pass through float32 would round these
    assert torch.equal(raw.lm.blocks[0].attn.W_Q[0], attn.q_proj.weight[: raw.cfg.d_head].T)
    assert torch.equal(raw.lm.blocks[0].attn.b_O, attn.o_proj.bias)
    assert torch.equal(raw.lm.W_U, hf.lm_head.weight.T)
