"""The papers this package implements, cited in docstrings by the short names below.

The bibliography with links is ``docs/papers.md`` in the repository.

=========  ==================================================================================
key        reference
=========  ==================================================================================
CB3D       C. Che, R. Lin, X. Zeng, K. Elmaaroufi, J. Galeotti, M. Xu. "Improved deep
           learning-based macromolecules structure classification from electron
           cryo-tomograms." Machine Vision and Applications 29, 1227-1236 (2018).
           doi:10.1007/s00138-018-0949-4. DSRF3D-v2, RB3D, CB3D; the simulation; Table 1.
SEMI3D     S. Liu, X. Du, R. Xi, F. Xu, X. Zeng, B. Zhou, M. Xu. "Semi-supervised
           macromolecule structural classification in cellular electron cryo-tomograms
           using 3D autoencoding classifier." British Machine Vision Conference (BMVC) 2019.
           The 3D autoencoding classifier (alpha * MSE + beta * CE).
RAT        X. Wu, Y. Mao, H. Wang, X. Zeng, X. Gao, E. P. Xing, M. Xu. "Regularized
           adversarial training (RAT) for robust cellular electron cryo tomograms
           classification." IEEE International Conference on Bioinformatics and Biomedicine
           (BIBM) 2019. doi:10.1109/BIBM47256.2019.8982954. DoG picking, 28^3 subtomograms,
           RAT, the attacks on CB3D.
MIRST      S. Sun, M. Xian, A. Vakanski, H. Ghanem. "MIRST-DM: Multi-instance RST with
           drop-max layer for robust classification of breast cancer." MICCAI 2022.
           arXiv:2205.01674. MIRST, the drop-max layer, RST, GR, LLR, SimCLR augmentation.
IMA        L. Ma, L. Liang. "Increasing-margin adversarial (IMA) training to improve
           adversarial robustness of neural networks." arXiv:2005.09147 (Computer Methods
           and Programs in Biomedicine, 2023). IMA, BPGD margins, 100-step PGD evaluation.
=========  ==================================================================================
"""

from __future__ import annotations

REFERENCES: dict[str, str] = {
    "CB3D": "Che, Lin, Zeng, Elmaaroufi, Galeotti, Xu. Improved deep learning-based "
            "macromolecules structure classification from electron cryo-tomograms. Machine "
            "Vision and Applications 29 (2018). doi:10.1007/s00138-018-0949-4",
    "SEMI3D": "Liu, Du, Xi, Xu, Zeng, Zhou, Xu. Semi-supervised macromolecule structural "
              "classification in cellular electron cryo-tomograms using 3D autoencoding "
              "classifier. BMVC 2019",
    "RAT": "Wu, Mao, Wang, Zeng, Gao, Xing, Xu. Regularized adversarial training (RAT) for "
           "robust cellular electron cryo tomograms classification. IEEE BIBM 2019. "
           "doi:10.1109/BIBM47256.2019.8982954",
    "MIRST": "Sun, Xian, Vakanski, Ghanem. MIRST-DM: Multi-instance RST with drop-max layer "
             "for robust classification of breast cancer. MICCAI 2022. arXiv:2205.01674",
    "IMA": "Ma, Liang. Increasing-margin adversarial (IMA) training to improve adversarial "
           "robustness of neural networks. arXiv:2005.09147",
}
"""Short key -> one-line reference (for reports and ``--help`` texts)."""
