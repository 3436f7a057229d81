"""Write a tiny random Llama (a local Hugging Face folder) to stand in for
UniCode's LLM on CPU: its token-embedding table is the tiny configs'
codebook, and the bridge can train it on image ids.

    python projects/UniCode/tools/make_tiny_llm.py OUT_DIR [--vocab 512]
        [--hidden 64] [--layers 2] [--heads 4] [--seed 0]

No download: the model is built from a ``LlamaConfig`` and saved with
``save_pretrained`` (safetensors). Needs transformers (``vistok[llm]``).
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.dirname(
    osp.abspath(__file__))))))

from projects.UniCode.unicode import require_transformers  # noqa: E402


def make_tiny_llm(out_dir: str, vocab: int = 1024, hidden: int = 64,
                  layers: int = 2, heads: int = 4, seed: int = 0) -> str:
    """Save a random ``LlamaForCausalLM`` of these sizes in ``out_dir``;
    returns ``out_dir``. Its embedding rows have random directions and
    norms uniform in [0.8, 1.6], around 1 as LLaMA-2's are (UniCode's
    latent-norm control assumes it: the look-up divides by 30 x the mean
    norm), so about three quarters pass the norm >= 1 rule."""
    transformers = require_transformers()
    import torch
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=heads, max_position_embeddings=1024,
        tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        table = model.get_input_embeddings().weight
        table.normal_()
        norms = torch.empty(vocab, 1).uniform_(0.8, 1.6)
        table.mul_(norms / table.norm(dim=1, keepdim=True))
    model.save_pretrained(out_dir)
    return out_dir


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('out_dir')
    parser.add_argument('--vocab', type=int, default=1024)
    parser.add_argument('--hidden', type=int, default=64)
    parser.add_argument('--layers', type=int, default=2)
    parser.add_argument('--heads', type=int, default=4)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    print(make_tiny_llm(args.out_dir, args.vocab, args.hidden, args.layers,
                        args.heads, args.seed))


if __name__ == '__main__':
    main()
