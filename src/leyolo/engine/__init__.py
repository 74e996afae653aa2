"""Engine: evaluation now; training later."""
