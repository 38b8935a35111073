"""Reading datasets: layouts -> manifest, decoding clips, the synthetic world, streaming."""
