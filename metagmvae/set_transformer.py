"""Set Transformer blocks (Lee et al., 2019) as Meta-GMVAE uses them: no LayerNorm."""
import math

import torch.nn.functional as F
from torch import nn


class MAB(nn.Module):
    """Multihead attention block: O = Q' + softmax(Q'K'^T / sqrt(dim)) V'; O = O + ReLU(W_o O).

    Heads split the features; the attention scale uses the full width `dim_out`, not the head width
    (the reference's choice).  Q: (B, M, dim_q), K: (B, N, dim_k) -> (B, M, dim_out).
    """

    def __init__(self, dim_q, dim_k, dim_out, num_heads):
        super().__init__()
        if dim_out % num_heads:
            raise ValueError(f"width {dim_out} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.scale = 1 / math.sqrt(dim_out)
        self.fc_q = nn.Linear(dim_q, dim_out)
        self.fc_k = nn.Linear(dim_k, dim_out)
        self.fc_v = nn.Linear(dim_k, dim_out)
        self.fc_o = nn.Linear(dim_out, dim_out)

    def _heads(self, x):
        B, N, C = x.shape  # -> (B, heads, N, C / heads)
        return x.view(B, N, self.num_heads, C // self.num_heads).transpose(1, 2)

    def forward(self, Q, K):
        q, k, v = self.fc_q(Q), self.fc_k(K), self.fc_v(K)
        attn = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v), scale=self.scale)
        out = q + attn.transpose(1, 2).reshape(q.shape)
        return out + F.relu(self.fc_o(out))


class SAB(nn.Module):
    """Set attention block SAB(X) = MAB(X, X) over the items of each set.  (B, M, dim_in) -> (B, M, dim_out)."""

    def __init__(self, dim_in, dim_out, num_heads):
        super().__init__()
        self.mab = MAB(dim_in, dim_in, dim_out, num_heads)

    def forward(self, X):
        return self.mab(X, X)
