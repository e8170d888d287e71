"""Built-in text for the synthetic corpus: non-keyword words and short phrases.

``CONFUSABLES`` sound like parts of the default keyword "hey computer" (hard negatives); ``COMMON_WORDS`` and
``PHRASES`` are ordinary English speech. Any entry equal to a configured keyword is dropped at render time.
"""

CONFUSABLES = (
    "hey", "computer", "computers", "computing", "compute", "computation", "commuter", "commuting", "commute",
    "composer", "competitor", "complete", "compost", "company", "cucumber", "pewter", "jupiter", "peter",
    "hey commuter", "hey compute", "hey company", "hey jupiter", "hey peter", "hey cucumber", "okay computer",
    "hi computer", "my computer", "a computer", "the computer", "hey there", "hey you", "hey come here",
    "they compute", "say computer", "hey composer", "hey copy", "hey hey", "hay", "hate", "computed",
)

COMMON_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "hundred",
    "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "start", "wait", "next", "back",
    "open", "close", "play", "pause", "louder", "quiet", "cancel", "repeat", "help", "again",
    "hello", "goodbye", "please", "thanks", "sorry", "maybe", "today", "tomorrow", "yesterday", "tonight",
    "morning", "evening", "water", "table", "window", "garden", "music", "weather", "kitchen", "family",
    "number", "people", "house", "paper", "coffee", "market", "picture", "letter", "doctor", "river",
    "mountain", "dinner", "summer", "winter", "button", "camera", "monitor", "printer", "keyboard", "phone",
    "bird", "cat", "dog", "bed", "tree", "happy", "orange", "banana", "chocolate", "pencil", "yellow",
    "purple", "silver", "animal", "language", "problem", "question", "answer", "minute", "second", "money",
    "station", "airport", "hospital", "library", "teacher", "student", "office", "meeting", "message",
    "battery", "machine", "engine", "network", "signal", "video", "movie", "story", "country", "city",
    "learn", "follow", "forward", "backward", "visual", "marvin", "sheila", "wow", "light",
)

PHRASES = (
    "good morning", "good night", "thank you", "see you later", "how are you", "what time is it",
    "turn on the lights", "turn off the lights", "play some music", "call my mother", "set a timer",
    "what is the weather", "open the door", "close the window", "next song", "volume up", "volume down",
    "where are my keys", "let us go", "i am hungry", "come here", "not now", "over there", "right now",
    "see you soon", "never mind", "all right", "excuse me", "nice to meet you", "have a good day",
    "the quick brown fox", "a cup of tea", "in the kitchen", "on the table", "read the news",
    "tell me a joke", "send a message", "what is your name", "it is raining", "make a call",
)

NON_KEYWORDS = tuple(dict.fromkeys(CONFUSABLES + COMMON_WORDS + PHRASES))
"""All built-in non-keyword texts, in order, without duplicates."""
