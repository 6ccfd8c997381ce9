"""Maths shared by several methods (mixtures, look-ahead steps, meta-label machinery, reweighting,
diagnostics); every module directly under training/methods/ is one method."""
