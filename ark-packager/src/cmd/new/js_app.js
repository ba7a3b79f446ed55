// An arkline step plugin in JavaScript.
import { Plugin, StepFailed, log } from "./sdk/index.js";
import { greeting } from "./greeting.js";

const steps = new Plugin();

steps.step("hello", "Greets someone", {
  type: "object",
  additionalProperties: false,
  required: ["name"],
  properties: {
    name: { type: "string", description: "Who to greet." },
    shout: { type: "boolean", default: false, description: "Greet in capitals." },
  },
}, (ctx, cfg) => {
  if (!cfg.name.trim()) throw new StepFailed("`name` is blank: say who to greet");
  log.info(`greeting ${cfg.name}`);
  return { greeting: greeting(cfg.name, cfg.shout) };
});

// What componentize-js exports.
export const plugin = steps.component();
