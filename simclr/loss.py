"""NT-Xent (normalised temperature-scaled cross-entropy) loss of SimCLR."""
import torch
import torch.nn.functional as F


def nt_xent(z1, z2, temperature=0.5, rows=None):
    """Mean over the anchors of -log softmax of the positive's cosine similarity / temperature.

    z1, z2: (N, D) embeddings of two views; row i of z1 and row i of z2 are positives of each
    other, and the other 2N - 2 embeddings are an anchor's negatives (itself excluded).
    rows: the images whose two views are the anchors (a range; default all N, so 2N anchors); a
    torchrun process passes its own rows of the gathered batch.  -> scalar.
    """
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=-1)  # (2N, D): cosine similarity as a dot product
    rows = torch.arange(n, device=z.device) if rows is None else torch.as_tensor(rows, device=z.device)
    anchors = torch.cat([rows, rows + n])  # (A,) indices into z
    logits = z[anchors] @ z.T / temperature  # (A, 2N)
    is_self = anchors.unsqueeze(1) == torch.arange(2 * n, device=z.device)
    logits = logits.masked_fill(is_self, float("-inf"))
    positive = (anchors + n) % (2 * n)  # anchor i's other view: i + N mod 2N
    return F.cross_entropy(logits, positive)
