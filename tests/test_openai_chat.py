"""How /v1/chat/completions turns messages into a prompt (no network: the front end's own logic)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from remoe.model.tiny import build_tokenizer
from remoe.openai_api.app import OpenAIFrontEnd
from remoe.openai_api.errors import APIError
from remoe.openai_api.schema import ChatCompletionRequest

MESSAGES = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}]


@pytest.fixture
def model_dir(tiny_model):
    return tiny_model("qwen3_moe")


def front(model_dir, tokenizer) -> OpenAIFrontEnd:
    core = SimpleNamespace(tokenizer=tokenizer, model_dir=model_dir, admission=SimpleNamespace(limit=4))
    return OpenAIFrontEnd(core, "m")  # the parts of a GatewayCore that turning messages into a prompt reads


def body(messages) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": messages})


def test_the_model_chat_template_renders_the_conversation(model_dir):
    tokenizer = build_tokenizer(512)  # a ChatML template
    ids = front(model_dir, tokenizer).chat_token_ids(body(MESSAGES))
    chatml = "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(ids) == chatml, "each message in its turn, and the assistant's turn opened"
    assert ids == tokenizer.encode(chatml)


def test_text_parts_are_joined_like_a_string(model_dir):
    parts = [{"role": "user", "content": [{"type": "text", "text": "H"}, {"type": "text", "text": "i"}]}]
    f = front(model_dir, build_tokenizer(512))
    assert f.chat_token_ids(body(parts)) == f.chat_token_ids(body([{"role": "user", "content": "Hi"}]))


def test_without_a_template_a_plain_transcript_is_used(model_dir):
    tokenizer = build_tokenizer(512)
    tokenizer.chat_template = None
    ids = front(model_dir, tokenizer).chat_token_ids(body(MESSAGES))
    assert tokenizer.decode(ids) == "System: Be terse.\nUser: Hi\nAssistant:"


def test_a_template_that_refuses_the_messages_is_a_400_naming_why(model_dir):
    tokenizer = build_tokenizer(512)
    tokenizer.chat_template = "{{ raise_exception('Conversation roles must alternate user/assistant') }}"
    with pytest.raises(APIError) as refused:
        front(model_dir, tokenizer).chat_token_ids(body(MESSAGES))
    assert refused.value.status == 400 and "roles must alternate" in refused.value.message
