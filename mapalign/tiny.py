"""Tiny random-initialised models and tokenizers for unit tests (built offline in well under a second).

The tokenizer is a 512-entry byte-level BPE trained on a small built-in corpus, with SmolLM2's
ChatML special tokens and chat template, so chat-formatting code paths run as with the real model.
Every builder saves to a folder and returns its path, so code under test goes through the same
`from_pretrained` loading path it uses for real models.
"""
import os

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "What is the best way to learn a new language quickly?",
    "How do I bake bread at home without a mixer?",
    "Tell me a joke about cats and dogs.",
    "I am feeling sad today, can you cheer me up?",
    "The weather is lovely and the children are playing in the park.",
    "Please explain how vaccines work in simple words.",
    "That was a terrible, horrible, awful movie and I hated it.",
    "What a wonderful, happy and delightful surprise!",
    "How can I get revenge on my noisy neighbour?",
    "Give me three tips for a good night's sleep.",
] * 20


def tiny_tokenizer(path):
    """Train and save a byte-level BPE tokenizer (vocab 512) with ChatML tokens; returns `path`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<unk>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<|im_start|>",
                                   eos_token="<|im_end|>", pad_token="<|im_end|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)
    return path


def tiny_causal_lm(path, arch="llama", seed=0):
    """Save a 2-layer, hidden-64 causal LM with the tiny tokenizer to `path`; returns `path`."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tiny_tokenizer(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(seed)
    if arch == "llama":
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=512, tie_word_embeddings=True,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
        model = LlamaForCausalLM(config)
    elif arch == "gpt2":
        config = GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4, n_positions=512,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
        model = GPT2LMHeadModel(config)
    else:
        raise ValueError(f"unknown tiny arch {arch!r}")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    return path


def tiny_sequence_classifier(path, num_labels=1, arch="gpt2", seed=0):
    """Save a tiny sequence-classification model (reward model) with the tiny tokenizer."""
    import torch
    from transformers import (AutoTokenizer, BertConfig, BertForSequenceClassification, GPT2Config,
                              GPT2ForSequenceClassification)

    tiny_tokenizer(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(seed)
    if arch == "gpt2":
        config = GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4, n_positions=512,
                            num_labels=num_labels, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        model = GPT2ForSequenceClassification(config)
    elif arch == "bert":
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=512,
                            num_labels=num_labels, pad_token_id=tokenizer.pad_token_id)
        model = BertForSequenceClassification(config)
    else:
        raise ValueError(f"unknown tiny arch {arch!r}")
    model.save_pretrained(path)
    return path


def tiny_bert_encoder(path, seed=0):
    """Save a tiny BertModel (with pooler) for embedding-based values (SimCSE, MiniLM)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tiny_tokenizer(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=512,
                        pad_token_id=tokenizer.pad_token_id)
    BertModel(config).save_pretrained(path)
    return path


def ensure_dir(path):
    os.makedirs(path, exist_ok=True)
    return path


ONE_STEP_WORDS = ["apple", "bread", "cloud", "delta", "ember", "frost", "grape", "honey"]


def one_step_lm(path, words=ONE_STEP_WORDS, seed=0):
    """A one-step policy for tests with a known optimum: a word-level tokenizer (the prompt word "q", the
    given words, 3 special tokens) and a tiny Llama whose one-token continuation distribution p0(y|"q")
    over the whole vocabulary is exactly computable. Returns `path`."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["<unk>", "<|im_start|>", "<|im_end|>", "q", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<|im_start|>",
                                   eos_token="<|im_end|>", pad_token="<|im_end|>")
    fast.save_pretrained(path)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # a clearly non-uniform p0 (logit spread ~1.5 nats)
        model.lm_head.weight.mul_(8.0)
    model.generation_config.pad_token_id = 2
    model.generation_config.eos_token_id = 2
    model.save_pretrained(path)
    return path
