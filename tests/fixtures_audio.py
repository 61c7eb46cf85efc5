"""Spanish test audio (espeak-ng) and generated Habla recordings dirs."""
