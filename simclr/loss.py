"""NT-Xent (normalised temperature-scaled cross-entropy) loss of SimCLR."""
import torch
import torch.nn.functional as F


def nt_xent(z1, z2, temperature=0.5):
    """Mean over the 2N anchors of -log softmax of the positive's cosine similarity / temperature.

    z1, z2: (N, D) embeddings of two views; row i of z1 and row i of z2 are positives of each
    other, and the other 2N - 2 embeddings are an anchor's negatives (itself excluded). -> scalar.
    """
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=-1)  # (2N, D): cosine similarity as a dot product
    logits = z @ z.T / temperature  # (2N, 2N)
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    positive = torch.arange(2 * n, device=z.device).roll(n)  # anchor i's other view: i + N mod 2N
    return F.cross_entropy(logits, positive)
