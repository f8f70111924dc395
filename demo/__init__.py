"""The Gradio web demo (UI only; the model lives in server.Model or behind --server-url)."""
