"""A standalone Hugging Face model for students their family's plain class cannot express: a Q/K/V
width (heads x head_dim) other than the hidden size, or an ELECTRA embedding projection between
equal widths. It carries the teacher family's conventions (autodistil/families.py): positions ("absolute"
or RoBERTa's "padded"), token types (type_vocab_size 0: none, DistilBERT), a fixed embedding width
with a projection to the hidden size (ELECTRA), and a pooler or none; the defaults are BERT's, so
folders written before these fields existed load unchanged. Registered with AutoConfig /
AutoModel / AutoModelForSequenceClassification on ``import autodistil``: such folders load
with ``AutoModel.from_pretrained(folder)`` and no ``trust_remote_code``.
It holds no reference to the supernet: plain nn.Linear/LayerNorm/Embedding modules with
BertModel's parameter names (ELECTRA's projection: "embeddings.project").
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling, SequenceClassifierOutput

from .families import position_ids


class AutoDistilBertConfig(PretrainedConfig):
    model_type = "autodistil_bert"

    def __init__(
        self,
        vocab_size=30522,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        attention_head_size=64,
        intermediate_size=3072,
        max_position_embeddings=512,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        initializer_range=0.02,
        pad_token_id=0,
        classifier_dropout=None,
        family="bert",
        positions="absolute",
        embedding_size=None,
        pooler=True,
        **kw,
    ):
        super().__init__(pad_token_id=pad_token_id, **kw)
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.attention_head_size, self.intermediate_size = attention_head_size, intermediate_size
        self.max_position_embeddings, self.type_vocab_size = max_position_embeddings, type_vocab_size
        self.layer_norm_eps, self.hidden_dropout_prob = layer_norm_eps, hidden_dropout_prob
        self.attention_probs_dropout_prob, self.initializer_range = (
            attention_probs_dropout_prob,
            initializer_range,
        )
        self.classifier_dropout = classifier_dropout
        self.family, self.positions = family, positions
        self.embedding_size, self.pooler = embedding_size, pooler


class _Embeddings(nn.Module):
    def __init__(self, c):
        super().__init__()
        e = c.embedding_size or c.hidden_size
        self.word_embeddings = nn.Embedding(c.vocab_size, e, padding_idx=c.pad_token_id)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, e)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, e) if c.type_vocab_size else None
        self.LayerNorm = nn.LayerNorm(e, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)
        self.project = nn.Linear(e, c.hidden_size) if c.embedding_size else None
        self.positions, self.pad = c.positions, c.pad_token_id

    def forward(self, ids, type_ids):
        x = self.word_embeddings(ids)  # (B, T, E)
        if self.token_type_embeddings is not None:
            x = x + self.token_type_embeddings(type_ids)
        x = x + self.position_embeddings(position_ids(ids, self.positions, self.pad))
        x = self.dropout(self.LayerNorm(x))  # (B, T, E)
        return x if self.project is None else self.project(x)  # (B, T, H)


class _SelfAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        w = c.num_attention_heads * c.attention_head_size
        self.query, self.key, self.value = (nn.Linear(c.hidden_size, w) for _ in range(3))
        self.dropout = nn.Dropout(c.attention_probs_dropout_prob)
        self.a, self.d = c.num_attention_heads, c.attention_head_size

    def forward(self, x, add_mask, need_probs=False):
        B, T, _ = x.shape
        split = lambda t: t.view(B, T, self.a, self.d).transpose(1, 2)  # (B, A, T, d)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        if not need_probs:  # fused SDPA (deployment path); eager below when maps are requested
            p = self.dropout.p if self.training else 0.0
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=add_mask, dropout_p=p)
            return ctx.transpose(1, 2).reshape(B, T, self.a * self.d), None
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d)  # (B, A, T, T)
        if add_mask is not None:
            scores = scores + add_mask
        probs = torch.softmax(scores, dim=-1)
        ctx = (self.dropout(probs) @ v).transpose(1, 2).reshape(B, T, self.a * self.d)
        return ctx, probs


class _Output(nn.Module):
    def __init__(self, i, o, c):
        super().__init__()
        self.dense = nn.Linear(i, o)
        self.LayerNorm = nn.LayerNorm(o, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def forward(self, y, res):
        return self.LayerNorm(self.dropout(self.dense(y)) + res)


class _Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.self = _SelfAttention(c)
        self.output = _Output(c.num_attention_heads * c.attention_head_size, c.hidden_size, c)


class _Intermediate(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.intermediate_size)


class _Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.attention = _Attention(c)
        self.intermediate = _Intermediate(c)
        self.output = _Output(c.intermediate_size, c.hidden_size, c)

    def forward(self, x, add_mask, need_probs=False):
        ctx, probs = self.attention.self(x, add_mask, need_probs)
        x = self.attention.output(ctx, x)
        return self.output(F.gelu(self.intermediate.dense(x)), x), probs


class _Encoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(c) for _ in range(c.num_hidden_layers))


class _Pooler(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)


class AutoDistilBertPreTrainedModel(PreTrainedModel):
    config_class = AutoDistilBertConfig
    base_model_prefix = "bert"

    def _init_weights(self, m):
        std = self.config.initializer_range
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class AutoDistilBertModel(AutoDistilBertPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embeddings = _Embeddings(config)
        self.encoder = _Encoder(config)
        self.pooler = _Pooler(config) if config.pooler else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        output_hidden_states=None,
        output_attentions=None,
        return_dict=None,
        **kw,
    ):
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, H)
        add_mask = None
        if attention_mask is not None:
            m = attention_mask[:, None, None, :].to(x.dtype)
            add_mask = (1.0 - m) * torch.finfo(x.dtype).min  # (B, 1, 1, T)
        hs, atts = [x], []
        for layer in self.encoder.layer:
            x, probs = layer(x, add_mask, bool(output_attentions))
            hs.append(x)
            atts.append(probs)
        pooled = None if self.pooler is None else torch.tanh(self.pooler.dense(x[:, 0]))  # (B, H)
        return BaseModelOutputWithPooling(
            last_hidden_state=x,
            pooler_output=pooled,
            hidden_states=tuple(hs) if output_hidden_states else None,
            attentions=tuple(atts) if output_attentions else None,
        )


class AutoDistilBertForSequenceClassification(AutoDistilBertPreTrainedModel):
    """classifier(dropout(pooled)). With a pooler (BERT, RoBERTa, XLM-R) `pooled` is its output, as in
    BertForSequenceClassification. Without one (ELECTRA, DistilBERT) the head brings its own:
    pooled = tanh(pre_classifier(last_hidden_state[:, 0])), a new dense layer on the first token
    (the shape of RoBERTa's and ELECTRA's classification heads, with BERT's pooler activation)."""

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = AutoDistilBertModel(config)
        self.pre_classifier = None if config.pooler else nn.Linear(config.hidden_size, config.hidden_size)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        labels=None,
        output_hidden_states=None,
        output_attentions=None,
        return_dict=None,
        **kw,
    ):
        out = self.bert(
            input_ids,
            attention_mask,
            token_type_ids,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        pooled = out.pooler_output
        if self.pre_classifier is not None:
            pooled = torch.tanh(self.pre_classifier(out.last_hidden_state[:, 0]))  # (B, H)
        logits = self.classifier(self.dropout(pooled))  # (B, C)
        loss = None
        if labels is not None:
            loss = (
                F.mse_loss(logits.squeeze(-1), labels.float())
                if self.num_labels == 1
                else F.cross_entropy(logits, labels)
            )
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions
        )


def register() -> None:
    try:
        AutoConfig.register(AutoDistilBertConfig.model_type, AutoDistilBertConfig)
        AutoModel.register(AutoDistilBertConfig, AutoDistilBertModel)
        AutoModelForSequenceClassification.register(
            AutoDistilBertConfig, AutoDistilBertForSequenceClassification
        )
    except ValueError:  # already registered (re-import)
        pass
