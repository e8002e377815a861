//! The five states of seed 004's Fig. 5, with the seed's names and reference numerals.

/// The five states of Fig. 5, named with the seed's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// "GL known" (702): a leader's LAs are arriving.
    GlKnown,
    /// "GL unknown" (703): no leader heard; a candidate waits its claim interval.
    GlUnknown,
    /// "GL is me" (704): this node leads and multicasts LA.
    GlIsMe,
    /// "Voting open" (705): this node sent an LC and waits for the voting timeout.
    VotingOpen,
    /// "Conceding" (706) to another candidate, pending its LA.
    Conceding,
}

impl State {
    /// The reference numeral of the state in Fig. 5.
    pub fn numeral(self) -> u16 {
        match self {
            State::GlKnown => 702,
            State::GlUnknown => 703,
            State::GlIsMe => 704,
            State::VotingOpen => 705,
            State::Conceding => 706,
        }
    }

    /// The seed's name of the state.
    pub fn as_str(self) -> &'static str {
        match self {
            State::GlKnown => "GL known",
            State::GlUnknown => "GL unknown",
            State::GlIsMe => "GL is me",
            State::VotingOpen => "voting open",
            State::Conceding => "conceding",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
