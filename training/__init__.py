"""Dataset building, fine-tuning, WER evaluation, promotion and CTranslate2 export."""
