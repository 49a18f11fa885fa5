"""The models: BERT and DistilBERT with their heads. Import only core and kernels.
"""
