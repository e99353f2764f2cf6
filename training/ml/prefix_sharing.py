"""Prefix sharing: the K responses of a prompt share its tokens, so encode them once per group.

A group's K sequences are ``prefix + suffix_i`` (the rendered conversation, then reply i). Instead of K rows
of ``prefix + suffix_i`` (the prefix encoded K times), one row holds ``[prefix, suffix_1, …, suffix_K]`` with

* a block attention mask: the prefix is causal, each suffix sees the whole prefix and its own earlier
  tokens, never another suffix (4D mask of shape (B, 1, L, L), given to the model as-is);
* position ids that restart after the prefix for every suffix, so suffix i sits at the positions it has
  in its own unshared sequence;
* the reward of response i read at the last token of suffix i (the per-token scores of the head).

For a causal decoder this is the same computation as K separate rows (same tokens, positions and visible
context for every token), up to floating-point summation order; tested against the unshared path. With a
prompt 3.5× the reply and K=8, a group is 11.5 reply lengths of tokens instead of 36. Bidirectional encoders
(BERT-like: the prompt's states depend on the reply) cannot share, which ``verify_sharing`` detects.
"""
from __future__ import annotations

import torch

PAD_SEGMENT = -1  # segment id of padding; 0 is the shared prefix, i + 1 is suffix i


def shared_prefix_length(sequences: list[list[int]]) -> int:
    """Longest common prefix of the sequences, leaving every sequence at least one token of its own.

    >>> shared_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]])
    2
    >>> shared_prefix_length([[1, 2], [1, 2, 3]])  # the first must keep a token to read its reward at
    1
    """
    shortest = min(len(s) for s in sequences)
    length = 0
    while length < shortest and all(s[length] == sequences[0][length] for s in sequences):
        length += 1
    return min(length, shortest - 1)


def pack_groups(groups: list[list[list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """One row per group: [prefix, suffix_1, …, suffix_K], padded on the right.

    Returns input_ids, position_ids and segments, all (B, L), and ``readout`` (N,): the flat index
    (row · L + column) of each response's last token, in the order of the groups' sequences.

    >>> packed = pack_groups([[[7, 8, 1], [7, 8, 2, 3]], [[9, 4]]], pad_token_id=0)
    >>> packed["input_ids"]
    tensor([[7, 8, 1, 2, 3],
            [9, 4, 0, 0, 0]])
    >>> packed["position_ids"]
    tensor([[0, 1, 2, 2, 3],
            [0, 1, 0, 0, 0]])
    >>> packed["segments"]
    tensor([[ 0,  0,  1,  2,  2],
            [ 0,  1, -1, -1, -1]])
    >>> packed["readout"]
    tensor([2, 4, 6])
    """
    rows, positions, segments, ends = [], [], [], []
    for sequences in groups:
        shared = shared_prefix_length(sequences)
        ids, pos, seg = list(sequences[0][:shared]), list(range(shared)), [0] * shared
        row_ends = []
        for i, sequence in enumerate(sequences):
            ids += sequence[shared:]
            pos += range(shared, len(sequence))
            seg += [i + 1] * (len(sequence) - shared)
            row_ends.append(len(ids) - 1)
        rows.append(ids), positions.append(pos), segments.append(seg), ends.append(row_ends)
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    segment_ids = torch.full((len(rows), width), PAD_SEGMENT, dtype=torch.long)
    readout = []
    for b, (ids, pos, seg, row_ends) in enumerate(zip(rows, positions, segments, ends)):
        input_ids[b, : len(ids)] = torch.tensor(ids)
        position_ids[b, : len(pos)] = torch.tensor(pos)
        segment_ids[b, : len(seg)] = torch.tensor(seg)
        readout += [b * width + end for end in row_ends]
    return {"input_ids": input_ids, "position_ids": position_ids, "segments": segment_ids,
            "readout": torch.tensor(readout, dtype=torch.long)}


def block_attention_mask(segments: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, L) segment ids -> (B, 1, L, L) mask: True (bool) or 0 (float, additive) where query q may attend to
    key k; False or dtype's min elsewhere.

    q sees k when k ≤ q in the row and k is in the prefix or in q's own suffix; a padding query sees only itself
    (a row with no visible key would give NaN in softmax).
    """
    length = segments.shape[1]
    q, k = segments[:, :, None], segments[:, None, :]  # (B, L, 1), (B, 1, L)
    causal = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()  # (L, L)
    allowed = causal & (k != PAD_SEGMENT) & ((k == 0) | (k == q))  # (B, L, L)
    allowed |= torch.eye(length, dtype=torch.bool, device=segments.device)
    if dtype == torch.bool:
        return allowed[:, None]  # (B, 1, L, L)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segments.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]  # (B, 1, L, L)


def score_head(model) -> torch.nn.Module | None:
    """The per-token scoring head of a decoder's sequence-classification model (``.score``), or None.

    Looks through DDP (``.module``) and peft (``get_base_model``) wrappers.
    """
    return getattr(_unwrap(model), "score", None)


def _mask_dtype(model) -> torch.dtype:
    """Eager attention adds the mask to the scores (float); sdpa and the rest take booleans."""
    eager = getattr(_unwrap(model).config, "_attn_implementation", "sdpa") == "eager"
    return next(model.parameters()).dtype if eager else torch.bool


def _unwrap(model):
    inner = getattr(model, "module", model)  # DDP
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # peft


def packed_rewards(model, packed: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """One reward per response from a packed batch: (N,), in the order of ``packed["readout"]``.

    The model is called whole (so DDP and peft wrappers do their part); the head's per-token output, which
    the model pools at the last non-pad token of a row, is captured with a forward hook and read at each
    response's last token instead.
    """
    head = score_head(model)
    if head is None:
        raise ValueError(f"{type(model).__name__} has no per-token score head: prefix sharing needs a decoder")
    captured: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        mask = block_attention_mask(packed["segments"].to(device), _mask_dtype(model))  # (B, 1, L, L)
        model(input_ids=packed["input_ids"].to(device), position_ids=packed["position_ids"].to(device),
              attention_mask=mask)
    finally:
        handle.remove()
    token_scores = captured[-1].reshape(-1, captured[-1].shape[-1])  # (B·L, 1)
    return token_scores[packed["readout"].to(device), 0].float()  # (N,)


@torch.no_grad()
def sharing_error(model, groups: list[list[list[int]]], pad_token_id: int, device: torch.device) -> float:
    """Largest |shared − unshared| reward over ``groups`` (float32, eval mode): how far sharing is from exact.

    A trainer checks a few groups before using sharing; a model whose prompt states depend on the reply
    (bidirectional attention) or whose attention ignores a 4D mask gives a large error here.
    """
    from training.ml.data import pad_right

    was_training = model.training
    model.eval()
    try:
        input_ids, attention_mask = pad_right([s for g in groups for s in g], pad_token_id)  # (N, T)
        plain = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits[:, 0].float()
        shared = packed_rewards(model, pack_groups(groups, pad_token_id), device)  # (N,)
    except (RuntimeError, ValueError, TypeError):  # e.g. an attention implementation without 4D masks
        return float("inf")
    finally:
        model.train(was_training)
    return (plain - shared).abs().max().item()


def packed_logprobs(model, groups: list[list[tuple[list[int], list[int]]]], pad_token_id: int,
                    device: torch.device) -> torch.Tensor:
    """log π(response | prompt) of every (prompt ids, response ids) of every group, one packed row per group: (N,).

    The causal LM's logits at a token's predecessor in its own sequence give the token's log-prob: for the first
    token after the shared prefix that predecessor is the prefix's last token, shared by the K responses.
    Equal to ``generation.token_logprobs(...).sum(1)`` on the unshared rows (tested).
    """
    sequences = [[p + r for p, r in group] for group in groups]
    packed = pack_groups(sequences, pad_token_id)
    width = packed["input_ids"].shape[1]
    predecessor, target, owner = [], [], []  # flat indices into the packed rows, and the response they count for
    n = 0
    for b, group in enumerate(groups):
        shared = shared_prefix_length([p + r for p, r in group])
        offset = shared  # packed column of this sequence's first own token
        for prompt, response in group:
            length = len(prompt) + len(response)

            def column(t: int) -> int:  # packed column of token t of this sequence
                return t if t < shared else offset + t - shared

            for t in range(max(len(prompt), 1), length):  # response tokens (a token needs a predecessor)
                predecessor.append(b * width + column(t - 1))
                target.append(b * width + column(t))
                owner.append(n)
            offset += length - shared
            n += 1
    mask = block_attention_mask(packed["segments"].to(device), _mask_dtype(model))  # (B, 1, L, L)
    logits = model(input_ids=packed["input_ids"].to(device), position_ids=packed["position_ids"].to(device),
                   attention_mask=mask).logits  # (B, L, V)
    flat = logits.reshape(-1, logits.shape[-1])  # (B·L, V)
    predecessor, target = torch.tensor(predecessor, device=device), torch.tensor(target, device=device)
    tokens = packed["input_ids"].to(device).reshape(-1)[target]  # (M,)
    logp = torch.log_softmax(flat[predecessor].float(), dim=-1).gather(1, tokens[:, None]).squeeze(1)  # (M,)
    return torch.zeros(n, device=device).index_add(0, torch.tensor(owner, device=device), logp)  # (N,)


@torch.no_grad()
def logprob_sharing_error(model, groups: list[list[tuple[list[int], list[int]]]], pad_token_id: int,
                          device: torch.device) -> float:
    """Largest |shared − unshared| log π(response | prompt) over ``groups`` (eval mode), as ``sharing_error``."""
    from training.ml.generation import collate_scoring, token_logprobs  # (generation is heavier; import late)

    was_training = model.training
    model.eval()
    try:
        batch = {k: v.to(device) for k, v in collate_scoring([s for g in groups for s in g], pad_token_id).items()}
        plain = token_logprobs(model, batch).sum(dim=1)  # (N,)
        shared = packed_logprobs(model, groups, pad_token_id, device)  # (N,)
    except (RuntimeError, ValueError, TypeError):
        return float("inf")
    finally:
        model.train(was_training)
    return (plain - shared).abs().max().item()
